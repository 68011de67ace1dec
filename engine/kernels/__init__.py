"""Fused kernels of the engine: the trajectory norms of the inner loop (:func:`group_norms`)."""

from lil_meta.engine.kernels.group_norms import BACKENDS, group_norms, group_norms_torch

__all__ = ["BACKENDS", "group_norms", "group_norms_torch"]
