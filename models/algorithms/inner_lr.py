"""Inner learning rates α: one scalar, one per adapted tensor, or one per element; fixed or
learned; the same at every inner step or one per step.

``algorithm.rates.mode`` picks the shape, ``algorithm.rates.learn`` whether α is meta-learned
(Meta-SGD, Li et al., 2017, is ``per_element`` + learned) and ``algorithm.rates.per_step``
whether each of the S training steps has its own (MAML++'s LSLR, Antoniou et al., 2019, is
``per_tensor`` + learned + per step: every stored rate gains a leading dimension of size S).
Every rate starts at ``algorithm.inner_lr``. Learned rates are ``nn.Parameter``s of the
*algorithm* (not of the network), so the outer optimizer, built over ``algorithm.parameters()``,
updates them and the checkpoint (``algorithm.state_dict()``) holds them; fixed per-tensor,
per-element or per-step rates are buffers (saved too, so they may be set by hand or loaded).
The inner step is ``θᵏ⁺¹ = θᵏ − αₖ ⊙ gᵏ`` with α broadcast over each tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lil_meta.engine.errors import ConfigError

MODES = ("scalar", "per_tensor", "per_element")


def _key(name: str) -> str:
    """Module attribute names cannot hold '.'; ``features.0.0.weight`` → ``features:0:0:weight``."""
    return name.replace(".", ":")


class InnerLR(nn.Module):
    """The rates α for the adapted tensors ``params`` (``{name: θ⁰ tensor}``): ``at(name, step)``.

    A rate is a Python float (``scalar``, fixed, not per step — the cheapest form), a 0-dim
    tensor (``scalar`` learned, ``per_tensor``) or a tensor shaped like the parameter
    (``per_element``); with ``steps`` (per-step rates) each has a leading dimension of that size
    and step k reads row k. Rates take the dtype and device of their parameter.
    """

    def __init__(self, init: float, params: Mapping[str, torch.Tensor], mode: str = "scalar", learn: bool = False,
                 steps: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"algorithm.rates.mode: expected one of {', '.join(MODES)}; got '{mode}'")
        self.init, self.mode, self.learn = float(init), mode, bool(learn)
        self.steps = None if steps is None else int(steps)
        self.names = list(params)
        lead = () if self.steps is None else (self.steps,)
        if mode == "scalar" and not learn and self.steps is None:
            return
        if mode == "scalar":
            ref = next(iter(params.values()), torch.empty(()))
            self._add("scalar", torch.full(lead, self.init, dtype=ref.dtype, device=ref.device))
            return
        for name, p in params.items():
            shape = lead + (tuple(p.shape) if mode == "per_element" else ())
            self._add(_key(name), torch.full(shape, self.init, dtype=p.dtype, device=p.device))

    def _add(self, key: str, rate: torch.Tensor) -> None:
        if self.learn:
            self.register_parameter(key, nn.Parameter(rate))
        else:
            self.register_buffer(key, rate)

    def __getitem__(self, name: str) -> float | torch.Tensor:
        """The stored rate of tensor ``name`` (with its step dimension, for per-step rates)."""
        if self.mode == "scalar":
            return self.scalar if (self.learn or self.steps is not None) else self.init
        try:
            return getattr(self, _key(name))
        except AttributeError:
            raise KeyError(f"inner learning rates: no rate for '{name}' (rates were made at "
                           f"construction for: {', '.join(self.names)})") from None

    def at(self, name: str, step: int) -> float | torch.Tensor:
        """The rate of tensor ``name`` at inner step ``step``."""
        rate = self[name]
        if self.steps is None:
            return rate
        if not 0 <= step < self.steps:
            raise ConfigError(f"algorithm.rates.per_step: the rates exist for the {self.steps} training steps; "
                              f"step {step} has none (an evaluation or a term's trajectory with more steps)")
        return rate[step]

    def extra_repr(self) -> str:
        per_step = f", per_step={self.steps}" if self.steps is not None else ""
        return f"init={self.init}, mode={self.mode}, learn={self.learn}{per_step}"
