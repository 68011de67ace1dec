"""A training process killed with SIGKILL at random iterations, resumed each time with --resume,
ends bit-identical to an uninterrupted run: across evaluations, checkpoints and the
LIL-pretraining → FOMAML boundary."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests_helpers import ROOT

SCRIPT, TINY = ROOT / "tools" / "train_net.py", ROOT / "tests" / "configs" / "tiny.yaml"
# 24 iterations: LIL pretraining for the first 10, then FOMAML; checkpoints every 3, validation every 5
RUN = ["algorithm.name=fomaml", "pretrain.iters=10", "pretrain.algorithm.momentum=0.5", "solver.max_iter=24",
       "solver.checkpoint_period=3", "test.eval_period=5", "test.tasks=10"]


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--config-file", str(TINY), "--output-dir", str(out), *extra, *RUN]


def logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def kill_at(out: Path, iteration: int, resume: bool) -> None:
    """Start (or resume) the run and SIGKILL it once ``iteration`` iterations are logged."""
    proc = subprocess.Popen(command(out, *(["--resume"] if resume else [])), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while logged(out) < iteration and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_at_random_iterations_then_resume_is_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run(command(whole), cwd=ROOT, capture_output=True).returncode == 0
    rng = random.Random(7)
    targets = sorted(rng.sample(range(2, 23), 4))  # e.g. before/after checkpoints and the boundary
    for i, target in enumerate(targets):
        kill_at(killed, target, resume=i > 0)
    proc = subprocess.run(command(killed, "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    a = torch.load(whole / "model_final.pth", weights_only=True)["model"]
    b = torch.load(killed / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (whole, killed))
    assert (ra["test_acc"], ra["best_val_acc"], ra["best_val_iter"]) == (rb["test_acc"], rb["best_val_acc"],
                                                                          rb["best_val_iter"])
    metrics = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == list(range(1, 25))
    whole_metrics = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in metrics] == [m["loss"] for m in whole_metrics]
    assert (killed / "log.txt").read_text().count("resuming from iteration") >= 3  # targets 3, 6, 12, 14
