"""Faults of a run of several processes (gloo, CPU), each bounded in time (docs/cluster.md):
a stalled process, a lost one under torchrun with a restart, a NaN on one process only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests_helpers import ROOT, finish, process_env, start_processes

SCRIPT, TINY = ROOT / "tools" / "train_net.py", ROOT / "tests" / "configs" / "tiny.yaml"
RUN = ["solver.max_iter=40", "solver.checkpoint_period=10", "test.eval_period=1000", "test.tasks=5",
       "test.val_tasks=5"]


def start_two(out: Path, *extra: str) -> list[subprocess.Popen]:
    return start_processes(["--config-file", str(TINY), "--output-dir", str(out), *RUN, *extra])


def logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def wait_logged(out: Path, n: int, procs, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while logged(out) < n:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"no iteration {n} in {out}"
        time.sleep(0.02)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "run"
    for code, err in finish(start_two(out)):
        assert code == 0, err[-2000:]
    return out


def test_a_stalled_process_ends_the_others_within_the_timeout_and_the_run_resumes_exactly(uninterrupted, tmp_path):
    out = tmp_path / "stalled"
    procs = start_two(out, "launch.timeout_s=20")
    wait_logged(out, 15, procs)
    os.kill(procs[1].pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - stopped
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 4, err[-2000:]
    assert 15 <= waited <= 60, waited  # the 20 s timeout, give or take the step in flight
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err[-2000:]
    assert re.fullmatch(r"error: iteration \d+: the all-reduce of the (meta-gradients|logged scalars) waited "
                        r"launch\.timeout_s=20 s: process 1 of 2 did not answer; the last checkpoint is "
                        r"model_\d{7}\.pth; continue with --resume once every process can run", errors[0]), errors[0]
    for code, err in finish(start_two(out, "--resume")):
        assert code == 0, err[-2000:]
    same_weights(uninterrupted / "model_final.pth", out / "model_final.pth")


def test_torchrun_restarts_a_lost_worker_and_the_run_continues_exactly(uninterrupted, tmp_path):
    out = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "1", str(SCRIPT), "--config-file", str(TINY), "--output-dir", str(out), *RUN]
    agent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_logged(out, 15, [agent])
        os.kill(next(pid for pid in _workers(agent.pid) if process_env(pid).get("RANK") == "1"), signal.SIGKILL)
        output, _ = agent.communicate(timeout=240)
    finally:
        if agent.poll() is None:
            for pid in _workers(agent.pid):
                os.kill(pid, signal.SIGKILL)
            agent.kill()
            agent.communicate()
    assert agent.returncode == 0, output[-3000:]
    assert "restarted attempt 1 (torchrun --max-restarts): continuing the run" in (out / "log.txt").read_text()
    same_weights(uninterrupted / "model_final.pth", out / "model_final.pth")


def _workers(agent: int) -> list[int]:
    """torchrun's worker processes (its children, each in a session of its own)."""
    found = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def test_a_nan_on_one_process_stops_every_process_at_the_same_iteration(tmp_path):
    """The check read before the update (the CPU default); the skip below reads it a step late."""
    out = tmp_path / "nan"
    bad = ["extra_modules=[fault_injection]", "algorithm.name=nan_on_rank", "+algorithm.bad_rank=1",
           "+algorithm.bad_steps=[20]"]
    results = finish(start_two(out, *bad))
    for code, err in results:
        assert code == 3, err[-2000:]
        assert re.search(r"^error: iteration 20: non-finite loss .*training stopped", err, re.M), err[-2000:]
    # the saved state is the one from before iteration 20: the checkpoint written after iteration 19
    assert (out / "last_checkpoint").read_text() == "model_last_good.pth"
    same_weights(out / "model_0000019.pth", out / "model_last_good.pth")


def test_a_nan_on_one_process_is_skipped_by_every_process(tmp_path):
    out = tmp_path / "skip"
    bad = ["extra_modules=[fault_injection]", "algorithm.name=nan_on_rank", "+algorithm.bad_rank=1",
           "+algorithm.bad_steps=[20,25]", "solver.on_nonfinite=skip", "solver.fused=true"]
    results = finish(start_two(out, *bad))
    for code, err in results:
        assert code == 0, err[-2000:]
    skipped = re.findall(r"iteration (\d+): non-finite loss .*; batch skipped", (out / "log.txt").read_text())
    assert skipped == ["20", "25"]
    assert re.findall(r"iteration (\d+): non-finite loss .*; batch skipped", results[1][1]) == ["20", "25"]
