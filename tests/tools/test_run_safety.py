"""No run lost, mixed or silently wrong, end to end through tools/train_net.py: the run folder's
lock, resumes that never start over in silence, weights that are tested or trained from only
when usable, and interruptions that end with one line."""

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

from lil_meta.engine.run_lock import acquire
from lil_meta.tools.train_net import main as train_net_main
from tests_helpers import ROOT

SCRIPT, TINY = ROOT / "tools" / "train_net.py", ROOT / "tests" / "configs" / "tiny.yaml"
RUN = ["solver.checkpoint_period=2", "test.tasks=10", "test.val_tasks=5", "test.eval_period=3"]


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--config-file", str(TINY), "--output-dir", str(out), *RUN, *extra]


def train_net(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, *extra), cwd=ROOT, capture_output=True, text=True, timeout=600)


def in_process(capsys, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """train_net.py's ``main`` in this process (no interpreter start-up): its exit status and
    output as a subprocess's would be."""
    capsys.readouterr()
    code = train_net_main(["--config-file", str(TINY), "--output-dir", str(out), *RUN, *map(str, extra)])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


def last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1] if lines else ""


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert train_net_main(["--config-file", str(TINY), "--output-dir", str(out), *RUN]) == 0
    return out


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    return out


def test_a_run_into_a_locked_folder_is_refused_and_changes_nothing(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    lock = acquire(out)
    lock.mark_owner()
    try:
        before = snapshot(out)
        proc = in_process(capsys, out, "--resume")
        assert proc.returncode == 2
        assert last_error(proc) == (f"error: output folder {out} is in use by another run (pid {os.getpid()}, "
                                    "lock run.lock); wait for it to end or choose another --output-dir")
        assert snapshot(out) == before
    finally:
        lock.release()


def test_two_runs_started_together_never_both_write(tmp_path):
    out = tmp_path / "race"
    procs = [subprocess.Popen(command(out, f"seed={seed}"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (3, 4)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert re.search(r"error: output folder .*(is in use by another run \(pid \d+|already holds a run)", refused)
    winner = 3 if results[0][0] == 0 else 4
    assert f"seed: {winner}\n" in (out / "config.yaml").read_text()
    assert [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    seeds = {torch.load(p, weights_only=True)["config"].count(f"seed: {winner}\n") for p in out.glob("model_*.pth")}
    assert seeds == {1}


def test_resume_without_last_checkpoint_continues_from_the_newest_one(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    (out / "last_checkpoint").unlink()
    stale = out / ".model_0000003.pth.4194999.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    weights = (out / "model_0000005.pth").read_bytes()
    proc = in_process(capsys, out, "--resume", "solver.task_chunk=1")
    assert proc.returncode == 0, proc.stderr
    log = (out / "log.txt").read_text()
    assert "resuming from model_0000005.pth instead of" in log and "resuming from iteration 6" in log
    assert "solver.task_chunk 'auto' -> 1" in log and "up to float rounding" in log
    assert f"removed {stale.name}" in log and not stale.exists()
    assert (out / "model_0000005.pth").read_bytes() == weights
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6


def test_resume_with_another_config_before_the_first_checkpoint_is_refused(finished, tmp_path, capsys):
    out = tmp_path / "early"
    out.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(finished / name, out / name)
    before = snapshot(out)
    proc = in_process(capsys, out, "--resume", "seed=4", "solver.lr=0.01")
    assert proc.returncode == 2
    assert re.fullmatch(r"error: .*early/config\.yaml: the run in .* has another config \(seed: 3 in config\.yaml, "
                        r"4 now; solver\.lr: 0\.003 in config\.yaml, 0\.01 now\).*", last_error(proc))
    assert snapshot(out) == before


def test_weights_that_cannot_be_used(finished, tmp_path, capsys):
    state = torch.load(finished / "model_final.pth", weights_only=True)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, tmp_path / "nan.pth")
    proc = in_process(capsys, tmp_path / "eval", "--eval-only", "--weights", tmp_path / "nan.pth")
    assert proc.returncode == 3 and "accuracy" not in proc.stdout
    assert re.fullmatch(r"error: .*nan\.pth: the weights hold NaN or inf values \(.*\); not evaluated",
                        last_error(proc))
    proc = in_process(capsys, tmp_path / "fresh", "--weights", tmp_path / "absent.pth")
    assert proc.returncode == 2 and last_error(proc).endswith("absent.pth: checkpoint not found")
    assert not (tmp_path / "fresh").exists()


def test_weights_without_eval_only_start_the_training(finished, tmp_path, capsys):
    out = tmp_path / "tuned"
    proc = in_process(capsys, out, "--weights", finished / "model_final.pth", "solver.max_iter=0")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"initialised from .*model_final\.pth: (\d+) of the model's \1 tensors loaded",
                     (out / "log.txt").read_text())
    start, end = (torch.load(p, weights_only=True)["model"] for p in (finished / "model_final.pth",
                                                                       out / "model_final.pth"))
    assert start.keys() == end.keys() and all(torch.equal(start[k], end[k]) for k in start)


def _default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal would deliver it. A shell that starts the
    test suite in the background sets SIGINT to 'ignore', which a child inherits, and a run
    rightly leaves an ignored SIGINT alone (``nohup`` semantics), so it would never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_with_one_line_and_no_temporary_file(tmp_path, signum):
    out = tmp_path / "long"
    proc = subprocess.Popen(command(out, "solver.max_iter=100000", "solver.checkpoint_period=1",
                                    "test.eval_period=0"), preexec_fn=_default_sigint,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        while proc.poll() is None and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.02)  # polls for a state the run reaches; the run cannot end before it is signalled
        proc.send_signal(signum)
        err = proc.communicate(timeout=600)[1]
    finally:
        proc.kill()  # a run that missed the signal must not outlive the test
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(r"interrupted at iteration \d+; continue with --resume", line), err
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert f"error: {line}" in (out / "log.txt").read_text()


def _small_disk(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_ends_with_one_line_naming_the_file(tmp_path):
    disk = tmp_path / "disk"
    if not _small_disk(disk, "104k"):  # a run needs about 240 kB
        pytest.skip("needs root to mount a small tmpfs")
    try:
        proc = train_net(disk / "run")
        assert proc.returncode == 2
        assert re.fullmatch(r"error: .*disk/run/\S+: cannot write it: No space left on device; .*--resume",
                            last_error(proc)), proc.stderr
        assert not list((disk / "run").glob(".*.tmp"))
        last = (disk / "run" / "last_checkpoint").read_text()
        assert torch.load(disk / "run" / last, weights_only=True)["iteration"] > 0
    finally:
        subprocess.run(["umount", str(disk)], check=True)
