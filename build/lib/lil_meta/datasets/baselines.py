"""Learning-free reference classifiers, used to calibrate datasets and to sanity-check models.

A meta-learned network is only interesting if it clearly beats these: the built-in ``glyphs``
dataset is tuned so raw-pixel nearest-class-mean sits well below what a Conv4 learns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lil_meta.datasets.task_batch import TaskBatch

__all__ = ["nearest_class_mean_accuracy"]


def nearest_class_mean_accuracy(batch: TaskBatch) -> torch.Tensor:
    """Per-task accuracy ``[B]`` of assigning each query image to the nearest support class mean.

    Class means and distances are Euclidean on the raw, flattened pixels; no learning involved.
    """
    sx, qx = batch.support_x.flatten(2).double(), batch.query_x.flatten(2).double()
    way = int(torch.maximum(batch.support_y.max(), batch.query_y.max())) + 1
    onehot = F.one_hot(batch.support_y, way).double()
    means = onehot.transpose(1, 2) @ sx / onehot.sum(1).clamp_min(1).unsqueeze(-1)
    pred = torch.cdist(qx, means).argmin(dim=-1)
    return (pred == batch.query_y).float().mean(dim=1)
