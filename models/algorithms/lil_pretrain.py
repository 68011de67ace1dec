"""LIL pretraining (docs/design.md §1.1, paper appendix E): linearity in the inner loop, no query labels.

A BYOL-style teacher/student pair over one network (paper Fig. 5), as a :class:`GBML` whose
only outer term is :class:`~losses.lil_pretrain.LILPretrainLoss`: in training the student takes
one inner step (its first step Δ⁰ is the direction of its straight step), the teacher — an EMA
of the student, updated by the term's ``begin_step`` once per training step — adapts S steps,
and the loss is ``weight · KL(P_teacher ‖ s(f(xq|θ̂)))``.

Support labels drive the inner loops, as in every GBML method; query labels never enter the loss
(``teacher_acc``, the teacher's adapted query accuracy, and ``acc``, the student's after its one
step, are diagnostics only). The student's gradient flows through θ⁰ and, unless
``first_order``, through g⁰ (one Hessian-vector product, the cost of one-step MAML: the paper's
"only calculates the student's gradient"). The teacher is part of the ``state_dict``, so a
resumed run continues exactly. In ``eval()`` mode this is plain :class:`GBML` evaluation of the
student θ⁰ (``inner_steps_test`` steps, then query accuracy).
"""

from __future__ import annotations

from torch import nn

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.losses.lil_pretrain import LILPretrainLoss
from lil_meta.models.algorithms.base import GBML


@ALGORITHMS.register("lil_pretrain")
class LILPretrain(GBML):
    """GBML whose training step is LIL pretraining (teacher S steps, student one straight step).

    Args:
        model: the student network θ (the meta-parameters being pretrained).
        momentum: EMA momentum of the teacher (BYOL; the paper uses 0.999).
        weight: factor of the KL term (the paper's 0.1).
        **kwargs: :class:`GBML` arguments; ``inner_steps`` is the teacher's S (paper: 3).
    """

    def __init__(self, model: nn.Module, momentum: float = 0.999, weight: float = 0.1, **kwargs):
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"algorithm.momentum: expected 0 <= momentum < 1, got {momentum}")
        super().__init__(model, **{**kwargs, "losses": None})
        if self.inner_steps < 1:
            raise ConfigError("algorithm.inner_steps: LIL pretraining needs >= 1 teacher step")
        self.momentum, self.weight = float(momentum), float(weight)
        self.losses = nn.ModuleList([LILPretrainLoss(model, self.inner_steps, self.momentum, self.weight)])

    @property
    def teacher(self) -> nn.Module:
        """The EMA teacher network θₜ (held by the loss term)."""
        return self.losses[0].teacher

    def inner_steps_now(self) -> int:
        """In training the student's one step (the teacher takes ``inner_steps``); in eval mode
        ``inner_steps_test``."""
        return 1 if self.training else self.inner_steps_test

    def head_only(self, adapted) -> bool:
        """Never over precomputed features: the teacher's body is not the student's."""
        return False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # earlier versions held the teacher on the algorithm itself
        for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
            state_dict[prefix + "losses.0." + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
