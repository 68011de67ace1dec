"""Two training phases over one network: a pretraining algorithm, then the main one.

The paper's FOMAML + LIL (section 6, appendix E) is 15k iterations of LIL pretraining followed by
15k of plain FOMAML from the pretrained weights. A config says it with a ``pretrain`` section::

    algorithm: {name: fomaml, inner_lr: 0.5, inner_steps: 3}
    pretrain:
      iters: 15000                                   # the first 15k of solver.max_iter
      algorithm: {name: lil_pretrain, momentum: 0.999, weight: 0.1}

Both algorithms wrap the *same* network object, so phase 2 starts from exactly the weights
phase 1 ended with. The phase follows the training step's index (the trainer's iteration),
so a run resumed on either side of the boundary continues in the
right phase; each phase sees its own step index (the main algorithm's starts at 0 at the
boundary), which sets its logging schedule, and ``begin_step`` goes to the phase's algorithm.
Evaluation always uses the main algorithm: validation during pretraining measures the
initialisation θ⁰ the way the final model will be used (adapt on the support set, then test).
The trainer resets the optimizer's state at the boundary (:class:`engine.hooks.PhaseBoundary`).
"""

from __future__ import annotations

import torch
from torch import nn

from lil_meta.models.algorithms.base import GBML, drop_step_counter


class PretrainThen(nn.Module):
    """``pretrain`` for the first ``pretrain_iters`` training steps, then ``main``.

    ``pretrain.model`` must be ``main.model`` (one network). The output dict gains ``phase``
    (0 while pretraining, 1 after) so the logs show where the boundary was.
    """

    def __init__(self, pretrain: GBML, main: GBML, pretrain_iters: int):
        super().__init__()
        if pretrain.model is not main.model:
            raise ValueError("PretrainThen: the two phases must share one network")
        if pretrain_iters < 0:
            raise ValueError(f"pretrain.iters: must be >= 0, got {pretrain_iters}")
        self.pretrain, self.main = pretrain, main
        self.pretrain_iters = int(pretrain_iters)

    @property
    def model(self) -> nn.Module:
        return self.main.model

    @property
    def way(self) -> int:
        return self.main.way

    def phase(self, step: int) -> tuple[int, GBML, int]:
        """``(phase, its algorithm, the step's index within the phase)`` of training step ``step``."""
        if step < self.pretrain_iters:
            return 0, self.pretrain, step
        return 1, self.main, step - self.pretrain_iters

    def auto_task_chunk(self, device: torch.device, step: int = 0) -> int:
        """The training phase's algorithm's (:meth:`GBML.auto_task_chunk`)."""
        return self.phase(step)[1].auto_task_chunk(device, step)

    def begin_step(self, step: int) -> None:
        _, algorithm, local = self.phase(step)
        algorithm.begin_step(local)

    def forward(self, batch, step: int = 0) -> dict[str, torch.Tensor]:
        if not self.training:
            return self.main(batch)
        phase, algorithm, local = self.phase(step)
        out = algorithm(batch, step=local)
        out["phase"] = float(phase)  # a host number: no tensor to make on the device each step
        return out

    def diagnose(self, out: dict[str, torch.Tensor], rank: int = 0) -> str | None:
        return self.main.diagnose(out, rank)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        drop_step_counter(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
