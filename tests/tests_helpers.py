"""Small builders shared by the tests."""

from pathlib import Path

import torch

from lil_meta.datasets.task_batch import TaskBatch

ROOT = Path(__file__).resolve().parents[1]


def tiny_batch(tasks=2, way=5, shot=2, query=3, size=16, channels=1, seed=0):
    """Separable toy tasks: class c lights up the c-th horizontal band of the image."""
    g = torch.Generator().manual_seed(seed)

    def images(labels):
        x = 0.3 * torch.rand(*labels.shape, channels, size, size, generator=g)
        band = size // way
        for c in range(way):
            x[..., c * band:(c + 1) * band, :] += (labels == c).float()[..., None, None, None]
        return x

    sy = torch.stack([torch.randperm(way, generator=g).repeat_interleave(shot) for _ in range(tasks)])
    qy = torch.stack([torch.randperm(way, generator=g).repeat_interleave(query) for _ in range(tasks)])
    return TaskBatch(images(sy), sy, images(qy), qy)


def one_step_query_loss(model, support, query, lr=0.1):
    """θ⁰ (the named parameters) and the query loss after one second-order inner step on
    ``support``; both sets are 3-way with labels 0, 1, 2 repeated in order."""
    params = dict(model.named_parameters())

    def loss_at(p, x):
        labels = torch.arange(3).repeat(len(x) // 3)
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), labels)

    grads = torch.autograd.grad(loss_at(params, support), list(params.values()), create_graph=True)
    adapted = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return params, loss_at(adapted, query)
