#!/usr/bin/env bash
# local_slurm.sh: a one-node SLURM cluster on this machine, for CI and for developers who
# want to exercise the `--slurm` / `--launcher slurm` path (submitit's AutoExecutor with
# cluster="slurm") against a real slurmctld + slurmd instead of submitit's local executor.
#
# Must run as root (it installs Debian packages, writes /etc/slurm/slurm.conf and
# /etc/munge/munge.key, and starts munged, slurmctld and slurmd with SlurmUser=root).
# Debian/Ubuntu only (apt-get); tested on Debian 12 (slurm-wlm 22.05, munge 0.5.15).
#
# Usage:
#   tools/local_slurm.sh start    # install slurm-wlm + munge if missing, write the config,
#                                 # start the daemons, wait until the node is idle (idempotent)
#   tools/local_slurm.sh stop     # cancel all jobs, stop slurmd and slurmctld (and munged if
#                                 # this script started it)
#   tools/local_slurm.sh restart  # stop, then start
#   tools/local_slurm.sh status   # daemons, sinfo, squeue; exits 1 if the cluster is not up
#
# Then e.g.:  sbatch --wrap "sleep 2; echo hi"   or
#   submitit.AutoExecutor(folder="out/slurm", cluster="slurm")   (it warns that accounting is
#   off: there is no slurmdbd, so sacct cannot report job states. job.result() still works,
#   since it looks for the job's result file, but a job killed before submitit writes that
#   file, e.g. by `scancel --batch --signal=USR2` or SIGKILL, leaves job.result() waiting
#   forever: its state stays UNKNOWN. Use timeouts in tests.)
#
# The cluster: one node named $(hostname -s) at 127.0.0.1 with CPUs=$(nproc), one default
# partition "debug" with no time limit, JobRequeue=1 (batch jobs are requeueable, so
# `scontrol requeue JOBID` works), short KillWait/MinJobAge so tests do not wait long,
# AuthInfo=cred_expire=10 (a requeued job becomes eligible again cred_expire s after the
# requeue; SLURM's default of 120 s would make every requeue test wait two minutes) and
# a scheduler pass every 2 s (sched_interval, bf_interval: a job that becomes eligible by
# time alone, as a requeued one does, otherwise waits up to 30-60 s for the next pass),
# no accounting, no cgroups (proctrack/linuxproc, task/none).
#
# Environment:
#   LOCAL_SLURM_DIR      state, spool, logs and pid files (default /var/spool/local_slurm)
#   LOCAL_SLURM_TIMEOUT  seconds `start` waits for the node to become idle (default 60)
#   LOCAL_SLURM_FORCE=1  overwrite an /etc/slurm/slurm.conf this script did not write
#                        (the old one is kept as slurm.conf.bak.<time>)
set -euo pipefail

export PATH="${PATH:+$PATH:}/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin" # sbin: the daemons

STATE=${LOCAL_SLURM_DIR:-/var/spool/local_slurm}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf # where Debian's slurm-wlm looks (SLURM_CONF overrides it)
MARKER="# Written by tools/local_slurm.sh"
NODE=$(hostname -s)
CTLD_PID=$STATE/slurmctld.pid
SLURMD_PID=$STATE/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_OURS=$STATE/munged.started-here
CONF_CHANGED=0
LOGS=("$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" /var/log/munge/munged.log)

log() { echo "local_slurm: $*" >&2; }
die() {
	log "ERROR: $*"
	for f in "${LOGS[@]}"; do
		if [[ -s $f ]]; then
			echo "----- last lines of $f -----" >&2
			tail -n 25 "$f" >&2
		fi
	done
	exit 1
}

# pid of daemon $1 from pid file $2 if that process is alive and really is $1, else nothing
pid_of() {
	local pid
	[[ -r $2 ]] || return 1
	pid=$(<"$2")
	[[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
	echo "$pid"
}

# pids of all processes whose name is exactly $1 (no pgrep: procps is not in minimal images)
pids_named() {
	local d
	for d in /proc/[0-9]*; do
		[[ $(cat "$d/comm" 2>/dev/null) == "$1" ]] && echo "${d#/proc/}"
	done
	return 0
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

install_packages() {
	if command -v sbatch >/dev/null && command -v slurmctld >/dev/null &&
		command -v slurmd >/dev/null && command -v munged >/dev/null; then
		return
	fi
	command -v apt-get >/dev/null || die "slurm/munge are missing and there is no apt-get"
	log "installing slurm-wlm and munge with apt-get"
	# Keep the packages' maintainer scripts from starting their own daemons (with the
	# stock config) during the install; this script starts them below.
	local policy=/usr/sbin/policy-rc.d added_policy=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		added_policy=1
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				slurm-wlm munge
	} || rc=$?
	((added_policy)) && rm -f "$policy"
	((rc == 0)) || die "apt-get install slurm-wlm munge failed (exit $rc)"
}

start_munge() {
	if munge_works; then
		return
	fi
	local key=/etc/munge/munge.key pid
	install -d -m 0700 -o munge -g munge /etc/munge
	install -d -m 0711 -o munge -g munge /var/lib/munge
	install -d -m 0700 -o munge -g munge /var/log/munge
	install -d -m 0755 -o munge -g munge /run/munge
	if [[ ! -s $key ]]; then
		log "creating $key"
		if command -v mungekey >/dev/null; then
			mungekey --create --keyfile="$key"
		else
			dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
		fi
	fi
	chown munge:munge "$key"
	chmod 0400 "$key"
	if pid=$(pid_of munged "$MUNGE_PID"); then
		log "munged (pid $pid) is running but does not answer; restarting it"
		kill "$pid"
		sleep 1
	fi
	runuser -u munge -- munged --force || die "munged failed to start"
	touch "$MUNGE_OURS"
	for _ in $(seq 20); do
		munge_works && return
		sleep 0.5
	done
	die "munged started but 'munge -n | unmunge' fails"
}

write_conf() {
	local cpus mem_mb new
	cpus=$(nproc)
	# Slightly below the machine's memory, so slurmd never drains the node for "Low
	# RealMemory"; without RealMemory (default 1 MB) any job with --mem would be rejected.
	mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
	new=$(
		cat <<EOF
$MARKER; rerun it rather than editing this file.
ClusterName=localcluster
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
	)
	install -d -m 0755 "$STATE" "$STATE/ctld" "$STATE/slurmd" "$STATE/log" "$(dirname "$CONF")"
	if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
		[[ ${LOCAL_SLURM_FORCE:-0} == 1 ]] ||
			die "$CONF was not written by this script; set LOCAL_SLURM_FORCE=1 to replace it"
		cp -p "$CONF" "$CONF.bak.$(date +%Y%m%d%H%M%S)"
	fi
	if [[ -e $CONF ]] && [[ $(<"$CONF") == "$new" ]]; then
		return
	fi
	CONF_CHANGED=1
	printf '%s\n' "$new" >"$CONF"
	chmod 0644 "$CONF"
	log "wrote $CONF"
}

stop_daemon() { # name pidfile
	local pid
	pid=$(pid_of "$1" "$2") || return 0
	log "stopping $1 (pid $pid)"
	kill "$pid"
	for _ in $(seq 40); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.25
	done
	log "$1 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
	kill -9 "$pid" 2>/dev/null || true
}

# a daemon of that name that is not the one in our pid file (e.g. started by an init
# script); one that is just shutting down gets 10 s to go away
check_foreign() {
	local others
	pid_of "$1" "$2" >/dev/null && return
	for _ in $(seq 20); do
		others=$(pids_named "$1" | tr '\n' ' ')
		[[ -z $others ]] && return
		sleep 0.5
	done
	die "a $1 not started by this script is running (pid ${others% }); stop it first"
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

# slurmd answers locally and slurmctld has its registration from this very slurmd process
# (after a restart sinfo shows the saved state, e.g. "idle", before slurmd has registered)
slurmd_registered() {
	local mine theirs
	mine=$(scontrol show slurmd 2>/dev/null) || return 1
	mine=$(sed -n 's/^Boot time *= *//p' <<<"$mine")
	[[ -n $mine ]] || return 0 # field missing in this SLURM version: answering is enough
	theirs=$(scontrol show node "$NODE" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' || true)
	[[ ${theirs#SlurmdStartTime=} == "$mine" ]]
}

cmd_start() {
	install_packages
	write_conf
	start_munge
	if ((CONF_CHANGED)); then # daemons running with an older config must pick up the new one
		stop_daemon slurmd "$SLURMD_PID"
		stop_daemon slurmctld "$CTLD_PID"
	fi
	check_foreign slurmctld "$CTLD_PID"
	check_foreign slurmd "$SLURMD_PID"
	if ! pid_of slurmctld "$CTLD_PID" >/dev/null; then
		log "starting slurmctld"
		slurmctld || die "slurmctld failed to start"
	fi
	if ! pid_of slurmd "$SLURMD_PID" >/dev/null; then
		log "starting slurmd"
		slurmd || die "slurmd failed to start"
	fi
	local t0=$SECONDS state why resumed=0
	while true; do
		state=$(node_state)
		case $state in
		idle | mixed | allocated | completing) slurmd_registered && break ;;
		down* | drain* | fail*)
			if ((!resumed && SECONDS - t0 >= 5)); then
				log "node $NODE is $state; resuming it"
				scontrol update NodeName="$NODE" State=RESUME || true
				resumed=1
			fi
			;;
		esac
		if ((SECONDS - t0 >= TIMEOUT)); then
			sinfo >&2 || true
			case $state in
			"") why="no answer from slurmctld" ;;
			idle | mixed | allocated | completing) why="slurmd has not registered with slurmctld" ;;
			*) why="node state '$state'" ;;
			esac
			die "cluster not up after ${TIMEOUT} s: $why"
		fi
		sleep 1
	done
	log "cluster up after $((SECONDS - t0)) s: node $NODE is $state"
	sinfo
}

cmd_stop() {
	if pid_of slurmctld "$CTLD_PID" >/dev/null; then
		local jobs
		jobs=$(squeue -h -o %A 2>/dev/null || true)
		if [[ -n $jobs ]]; then
			log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
			# shellcheck disable=SC2086 # one job id per word
			scancel $jobs || true
			for _ in $(seq 30); do
				[[ -z $(squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null) ]] && break
				sleep 0.5
			done
		fi
	fi
	stop_daemon slurmd "$SLURMD_PID"
	stop_daemon slurmctld "$CTLD_PID"
	if [[ -e $MUNGE_OURS ]]; then
		stop_daemon munged "$MUNGE_PID"
		rm -f "$MUNGE_OURS"
	fi
}

cmd_status() {
	local ok=0 name pidfile pid
	for name in munged slurmctld slurmd; do
		case $name in
		munged) pidfile=$MUNGE_PID ;;
		slurmctld) pidfile=$CTLD_PID ;;
		slurmd) pidfile=$SLURMD_PID ;;
		esac
		if pid=$(pid_of "$name" "$pidfile"); then
			echo "$name: running (pid $pid)"
		else
			echo "$name: not running"
			ok=1
		fi
	done
	sinfo && squeue || ok=1
	return "$ok"
}

[[ $EUID -eq 0 ]] || {
	echo "local_slurm: must run as root" >&2
	exit 1
}
case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
restart)
	cmd_stop
	cmd_start
	;;
status) cmd_status ;;
*)
	echo "usage: $0 start|stop|restart|status" >&2
	exit 2
	;;
esac
