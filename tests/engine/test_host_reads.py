"""A non-logging training step reads at most one tensor value back to the host.

Counted black-box: every call of ``Tensor.item``, ``__float__``, ``__int__``, ``__bool__``,
``__index__``, ``tolist`` and ``numpy`` made from the project's own files (any thread, the batch
prefetcher's included), between the first hook's ``before_step`` and the last hook's
``after_step`` of the run's own trainer and hooks. On CUDA each such read is a device
synchronisation; the step's one read is whether the loss and the meta-gradient are finite.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pytest
import torch

from lil_meta.engine import runner
from lil_meta.engine.trainer import HookBase

PROJECT = Path(runner.__file__).resolve().parents[1]  # the repository's root
SOURCES = tuple(PROJECT / name for name in ("engine", "models", "losses", "datasets", "tools"))
READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy")


class HostReads:
    """Wraps the reading methods of ``torch.Tensor``; counts calls from project files."""

    def __init__(self) -> None:
        self.count, self.on, self._lock = 0, False, threading.Lock()

    def __enter__(self):
        self._saved = {name: getattr(torch.Tensor, name) for name in READS}
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, self._counting(original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def _counting(self, original):
        import sys

        def method(tensor, *args, **kwargs):
            if self.on:
                caller = Path(sys._getframe(1).f_code.co_filename).resolve()
                if any(caller.is_relative_to(folder) for folder in SOURCES):
                    with self._lock:
                        self.count += 1
            return original(tensor, *args, **kwargs)

        return method


class Window(HookBase):
    """Opens the count before every other hook and closes it after every other hook."""

    def __init__(self, reads: HostReads, per_step: dict, first: bool) -> None:
        self.reads, self.per_step, self.first = reads, per_step, first

    def before_step(self) -> None:
        if self.first:
            self.reads.count, self.reads.on = 0, True

    def after_step(self) -> None:
        if not self.first:
            self.reads.on = False
            self.per_step[self.trainer.iter] = self.reads.count


def reads_per_step(config: str, tmp_path: Path, iters: int = 5) -> dict[int, int]:
    args = argparse.Namespace(
        config_file=str(PROJECT / "configs" / config), resume=False, eval_only=False, weights=None,
        output_dir=str(tmp_path / "run"), slurm=False, slurm_local=False,
        opts=["model.backbone.hidden=8", f"solver.max_iter={iters}", "log.period=1000", "test.eval_period=1000",
              "solver.checkpoint_period=1000", "test.tasks=5", "test.val_tasks=5", "log.tensorboard=false",
              "device=cpu"])
    built = runner.prepare_run(args)
    try:
        trainer = runner.build_trainer(built)
        reads, per_step = HostReads(), {}
        trainer._hooks.insert(0, Window(reads, per_step, first=True))
        trainer.register_hooks([Window(reads, per_step, first=False)])
        trainer._hooks[0].trainer = trainer._hooks[-1].trainer
        with reads:
            trainer.train(0, iters)
    finally:
        built.folder.release()
    return per_step


@pytest.mark.parametrize("config", ["maml_5shot.yaml", "maml_lil_5shot.yaml"])
def test_a_non_logging_step_reads_at_most_one_value(config, tmp_path):
    per_step = reads_per_step(config, tmp_path)
    # the last step logs, evaluates and checkpoints: it reads, and the counter must see that
    assert per_step[max(per_step)] > 1, "the counter sees no read"
    steps = {it: n for it, n in per_step.items() if it < max(per_step)}  # step 0 computes the diagnostics too
    assert len(steps) == 4 and all(n <= 1 for n in steps.values()), steps
