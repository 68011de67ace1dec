"""Inner learning rates α: one scalar, one per adapted tensor, or one per element; fixed or learned.

``algorithm.rates.mode`` picks the shape, ``algorithm.rates.learn`` whether α is
meta-learned (Meta-SGD, Li et al., 2017, is ``per_element`` + learned). Every rate starts at
``algorithm.inner_lr``. Learned rates are ``nn.Parameter``s of the *algorithm* (not of the
network), so the outer optimizer, built over ``algorithm.parameters()``, updates them and the
checkpoint (``algorithm.state_dict()``) holds them; fixed per-tensor/per-element rates are
buffers (saved too, so they may be set by hand or loaded). The inner step is
``θᵏ⁺¹ = θᵏ − α ⊙ gᵏ`` with α broadcast over each tensor.
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
    """The rates α for the adapted tensors ``params`` (``{name: θ⁰ tensor}``); ``lrs[name]``.

    ``lrs[name]`` is a Python float (``scalar``, fixed — the cheapest form), a 0-dim tensor
    (``scalar`` learned, ``per_tensor``) or a tensor shaped like the parameter
    (``per_element``). Rates take the dtype and device of their parameter.
    """

    def __init__(self, init: float, params: Mapping[str, torch.Tensor], mode: str = "scalar", learn: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"algorithm.rates.mode: expected one of {', '.join(MODES)}; got '{mode}'")
        self.init, self.mode, self.learn = float(init), mode, bool(learn)
        self.names = list(params)
        if mode == "scalar" and not learn:
            return
        if mode == "scalar":
            ref = next(iter(params.values()), torch.empty(()))
            self.register_parameter("scalar", nn.Parameter(torch.tensor(self.init, dtype=ref.dtype, device=ref.device)))
            return
        for name, p in params.items():
            rate = torch.full_like(p.detach(), self.init) if mode == "per_element" else (
                torch.tensor(self.init, dtype=p.dtype, device=p.device))
            if learn:
                self.register_parameter(_key(name), nn.Parameter(rate))
            else:
                self.register_buffer(_key(name), rate)

    def __getitem__(self, name: str) -> float | torch.Tensor:
        if self.mode == "scalar":
            return self.scalar if self.learn else self.init
        try:
            return getattr(self, _key(name))
        except AttributeError:
            raise KeyError(f"inner learning rates: no rate for '{name}' (rates were made at "
                           f"construction for: {', '.join(self.names)})") from None

    def extra_repr(self) -> str:
        return f"init={self.init}, mode={self.mode}, learn={self.learn}"
