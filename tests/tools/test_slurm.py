"""``tools/train_net.py --slurm`` against a real one-node SLURM cluster (``tools/local_slurm.sh``).

CI starts the cluster before the suite and sets ``LIL_REQUIRE_SLURM=1``, so there a missing
cluster fails these tests; elsewhere they are skipped when ``sbatch`` is not on PATH.

Each job trains ``tests/configs/tiny.yaml`` for longer than the other end-to-end tests so that
it can be interrupted mid-run; the reference is the same command run directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests_helpers import ROOT, finish, process_env, start_processes

SCRIPT, TINY = ROOT / "tools" / "train_net.py", ROOT / "tests" / "configs" / "tiny.yaml"
LONG = ["solver.max_iter=60", "solver.checkpoint_period=5", "test.eval_period=30", "test.tasks=10"]

if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode:
    if os.environ.get("LIL_REQUIRE_SLURM") == "1":
        pytest.fail("LIL_REQUIRE_SLURM=1 but no SLURM cluster answers (start one: tools/local_slurm.sh start)",
                    pytrace=False)
    pytest.skip("no SLURM cluster here (tools/local_slurm.sh start makes one)", allow_module_level=True)


def train_net(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config-file", str(TINY), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\w+)", out)
    return match.group(1) if match else "GONE"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def submit(out: Path, *extra) -> str:
    proc = train_net("--slurm", "--time", "10", "--cpus-per-task", "1", "--output-dir", out, *LONG, *extra)
    match = re.search(r"submitted job (\d+) \(slurm\)", proc.stdout)
    assert match, proc.stdout
    assert f"output: {out.resolve()}" in proc.stdout and "stdout: " in proc.stdout
    return match.group(1)


def logged_iters(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def finished(out: Path, job_id: str, timeout: float = 300) -> dict:
    def done():
        if (out / "results.json").is_file() and job_state(job_id) in ("COMPLETED", "GONE"):
            return json.loads((out / "results.json").read_text())
        if job_state(job_id) in ("FAILED", "CANCELLED", "TIMEOUT"):
            logs = "\n".join(p.read_text()[-3000:] for p in (out / "slurm").rglob("*.err"))
            raise AssertionError(f"job {job_id} ended {job_state(job_id)}:\n{logs}")
        return None

    return wait_for(done, timeout, f"job {job_id} to finish")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm_ref") / "run"
    train_net("--output-dir", out, *LONG)
    return out


def same_final_weights(a: Path, b: Path) -> None:
    wa = torch.load(a / "model_final.pth", weights_only=True)["model"]
    wb = torch.load(b / "model_final.pth", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_a_submitted_job_trains_like_a_direct_run(reference, tmp_path):
    out = tmp_path / "job"
    results = finished(out, submit(out))
    assert results["iterations"] == 60
    assert results["test_acc"] == json.loads((reference / "results.json").read_text())["test_acc"]
    assert (out / "last_checkpoint").read_text() == "model_0000059.pth"
    assert logged_iters(out) == 60
    assert list((out / "slurm").glob("*/*_log.out"))  # submitit's job folder inside the run's
    same_final_weights(reference, out)


def interrupted_run(reference: Path, out: Path, interrupt: list[str]) -> str:
    """Submit, run ``interrupt + [job id]`` once iteration 12 is logged, wait for the end,
    check the run finished with the reference's weights; returns the run's log."""
    job_id = submit(out)
    wait_for(lambda: logged_iters(out) >= 12, 120, "iteration 12")
    subprocess.run([*interrupt, job_id], check=True)
    assert finished(out, job_id)["iterations"] == 60
    same_final_weights(reference, out)
    return (out / "log.txt").read_text()


def test_a_requeued_job_resumes_and_ends_with_the_same_weights(reference, tmp_path):
    log = interrupted_run(reference, tmp_path / "requeued", ["scontrol", "requeue"])
    assert "resuming from iteration" in log  # the second start continued, not restarted


def test_preemption_signal_checkpoints_requeues_and_finishes(reference, tmp_path):
    log = interrupted_run(reference, tmp_path / "preempted", ["scancel", "--signal=USR2"])
    match = re.search(r"preempted or out of time: saved iteration (\d+), requeueing", log)
    assert match, log[-3000:]
    assert f"resuming from iteration {match.group(1)}" in log


def test_a_sweep_is_one_job_array(tmp_path):
    root = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), "--configs", str(TINY), "--seeds", "0", "1",
                           "--output-root", str(root), "--launcher", "slurm", "--cpus-per-task", "1", "--time", "10",
                           "solver.max_iter=2", "test.tasks=5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"submitted 2 jobs \(array \d+\)", proc.stdout), proc.stdout
    for seed in (0, 1):
        result = wait_for(lambda s=seed: (root / "tiny" / f"seed{s}" / "results.json").is_file(), 180,
                          f"seed {seed} of the array")
        assert result
    assert json.loads((root / "tiny" / "seed1" / "results.json").read_text())["iterations"] == 2


def _task_pid(job_id: str, procid: int) -> int | None:
    """The pid of task ``procid`` of the job (its Python process, on this one node)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            env = process_env(int(entry.name))
            if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(procid) \
                    and "submitit" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                return int(entry.name)
    return None


def test_a_task_that_dies_ends_the_job_within_seconds_and_a_resubmission_resumes_exactly(tmp_path):
    """Two tasks (two processes of one run, gloo); one SIGKILLed mid-run: srun's
    --kill-on-bad-exit ends the other, the job ends FAILED within a minute, its checkpoints
    intact, and submitting the run again continues it to the weights of a direct two-process run."""
    short = [*LONG, "solver.max_iter=30"]
    reference = tmp_path / "direct"
    for code, err in finish(start_processes(["--config-file", str(TINY), "--output-dir", str(reference), *short])):
        assert code == 0, err[-2000:]
    out = tmp_path / "two_tasks"
    job_id = submit(out, "--tasks-per-node", "2", "solver.max_iter=30")
    wait_for(lambda: logged_iters(out) >= 12, 120, "iteration 12")
    pid = wait_for(lambda: _task_pid(job_id, 1), 30, "task 1's process")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    state = wait_for(lambda: (job_state(job_id) not in ("RUNNING", "COMPLETING", "CONFIGURING")) and job_state(job_id),
                     60, f"job {job_id} to end after its task 1 was killed")
    assert state == "FAILED", state
    assert time.monotonic() - killed <= 60
    last = out / (out / "last_checkpoint").read_text()
    assert torch.load(last, weights_only=True)["iteration"] >= 10
    again = submit(out, "--tasks-per-node", "2", "solver.max_iter=30")
    assert finished(out, again)["iterations"] == 30
    assert "resuming from iteration" in (out / "log.txt").read_text()
    same_final_weights(reference, out)
