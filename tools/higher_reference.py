"""Second-order MAML written with the ``higher`` library: the memory and speed yardstick of
``tools/benchmark.py --higher`` and ``benchmarks/saved_tensors.py --higher``.

``higher.innerloop_ctx`` patches a copy of the network into a functional one whose inner SGD
steps (``diffopt.step``) keep their graph; the meta-gradient flows back into the network's own
weights (``copy_initial_weights=False``). One task at a time, the query loss of each task
backpropagated before the next task starts, as ``higher``'s MAML example does, so only one
task's graph is ever alive. The network is the engine's own with PyTorch's stock layers
(:func:`stock_layers`, the default memory layout), on the same weights and the same synthetic batch.
"""

from __future__ import annotations

import copy
import importlib
import time

import torch
import torch.nn.functional as F

from lil_meta.engine.errors import UserInputError
from lil_meta.models.backbones.layers import TaskBatchNorm2d, TaskMaxPool2d
from lil_meta.models.backbones.task_conv import TaskConv2d


def import_higher():
    """The ``higher`` module, or one :class:`UserInputError` line saying how to get it."""
    try:
        return importlib.import_module("higher")
    except ImportError:
        raise UserInputError("--higher: the 'higher' package is not installed in this environment "
                             "(pip install higher), or leave out --higher") from None


def stock_layers(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with PyTorch's own layers in place of this project's: ``BatchNorm2d`` (batch
    statistics, same weights) for :class:`TaskBatchNorm2d`, ``MaxPool2d`` for
    :class:`TaskMaxPool2d` and ``Conv2d`` (same weights) for :class:`TaskConv2d`, the layers
    most MAML code uses."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, TaskBatchNorm2d):
                stock = torch.nn.BatchNorm2d(child.num_features, eps=child.eps, track_running_stats=False)
                stock.load_state_dict(child.state_dict())
                setattr(parent, name, stock.to(child.weight.device, child.weight.dtype))
            elif isinstance(child, TaskMaxPool2d):
                setattr(parent, name, torch.nn.MaxPool2d(child.kernel_size))
            elif isinstance(child, TaskConv2d):
                stock = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                        child.padding, child.dilation, child.groups, bias=False)
                stock.load_state_dict(child.state_dict())
                setattr(parent, name, stock.to(child.weight.device, child.weight.dtype))
    return model


def task_loss(higher, model: torch.nn.Module, lr: float, steps: int, support_x, support_y, query_x, query_y,
              first_order: bool = False) -> torch.Tensor:
    """One task's query loss after ``steps`` differentiable SGD steps of rate ``lr`` on the
    support set, with the graph back to ``model``'s weights (none through the steps when
    ``first_order``)."""
    inner = torch.optim.SGD(model.parameters(), lr=lr)
    with higher.innerloop_ctx(model, inner, copy_initial_weights=False,
                              track_higher_grads=not first_order) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(F.cross_entropy(fmodel(support_x), support_y))
        return F.cross_entropy(fmodel(query_x), query_y)


class HigherMAML:
    """The ``--higher`` row: this module's MAML on a runner's batch, network and shape.

    ``runner`` has ``algo`` (its ``model``, ``inner_lr``, ``inner_steps``, ``first_order``; or a
    chain's ``main``), ``batch``, ``device``, ``cfg.solver.lr`` and ``cfg.solver.meta_batch``.
    """

    name = "higher per-task MAML"

    def __init__(self, runner):
        self.higher = import_higher()
        algo = getattr(runner.algo, "main", runner.algo)
        self.model = stock_layers(copy.deepcopy(algo.model))  # its own weights: both get Adam steps
        self.lr, self.steps, self.first_order = float(algo.inner_lr), algo.inner_steps, algo.first_order
        self.batch, self.device = runner.batch, runner.device
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=runner.cfg.solver.lr)
        self.meta_batch = runner.cfg.solver.meta_batch
        self.path = f"{self.device.type}/higher-loop"
        self.times: list[float] = []

    def accumulate(self) -> torch.Tensor:
        """Every task's loss backpropagated in turn (weighted 1/tasks); the mean loss, detached."""
        b, total = self.batch, 0.0
        for i in range(b.num_tasks):
            loss = task_loss(self.higher, self.model, self.lr, self.steps, b.support_x[i], b.support_y[i],
                             b.query_x[i], b.query_y[i], self.first_order) / b.num_tasks
            loss.backward()
            total = total + loss.detach()
        return total

    def step(self) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.accumulate()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start
