"""MAML++ (Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019; docs/design.md
§1.1c): MAML with its five fixes, each a switch of its own that also works with the other
algorithms where it makes sense.

- LSLR, learned per-layer per-step inner rates: ``algorithm.rates`` ``{mode: per_tensor, learn:
  true, per_step: true}`` (:class:`~models.algorithms.inner_lr.InnerLR`) — this preset's default;
- MSL, the multi-step loss: ``losses: [{name: multi_step_ce}]`` (:mod:`losses.multi_step`);
- DA, derivative-order annealing: ``algorithm.first_order_until: N``, first-order inner
  gradients for the training iterations before N, second order from N on (this class);
- CA, cosine annealing of the meta learning rate: ``solver.lr_schedule: cosine`` with
  ``solver.min_lr``;
- BNWB, per-step BatchNorm weights and biases: the backbone's, ``model.backbone.per_step_bn:
  true`` (:class:`~models.backbones.layers.TaskBatchNorm2d`; the engine hands the network the
  inner step, :func:`~engine.inner_loop.query_step`).

``configs/mamlpp_{1,5}shot.yaml`` set them all.
"""

from __future__ import annotations

import logging

from torch import nn

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models.algorithms.base import GBML

logger = logging.getLogger(__name__)


@ALGORITHMS.register("mamlpp", rates={"mode": "per_tensor", "learn": True, "per_step": True})
class MAMLPlusPlus(GBML):
    """GBML with MAML++'s derivative-order annealing; its registered preset adds LSLR (module doc).

    Args:
        model: the network θ.
        first_order_until: training iterations before this one detach the inner gradients
            (first order); from it on, second order (0: second order throughout).
        **kwargs: :class:`GBML` arguments.
    """

    def __init__(self, model: nn.Module, first_order_until: int = 0, **kwargs):
        super().__init__(model, **kwargs)
        if first_order_until < 0:
            raise ConfigError(f"algorithm.first_order_until: must be >= 0, got {first_order_until}")
        self.first_order_until = int(first_order_until)

    def first_order_at(self, step: int) -> bool:
        return self.first_order or step < self.first_order_until

    def begin_step(self, step: int) -> None:
        if step == self.first_order_until and self.first_order_until > 0 and not self.first_order:
            logger.info("iteration %d: second-order inner gradients from here on (algorithm.first_order_until=%d)",
                        step, self.first_order_until)
        super().begin_step(step)
