"""The one-batch lookahead (engine/prefetch.py): the sampler's order and state, and pinning
only what lives on the host."""

import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.prefetch import Prefetcher


class _Counter:
    """Batches whose support labels count the draws, on ``device``."""

    def __init__(self, device="cpu"):
        self.drawn, self.device = 0, torch.device(device)

    def next_batch(self):
        self.drawn += 1
        x = torch.zeros(1, 2, 1, 4, 4, device=self.device)
        y = torch.full((1, 2), self.drawn, device=self.device)
        return TaskBatch.trusted(x, y.remainder(2), x, y.remainder(2), way=2)

    def state_dict(self):
        return {"drawn": self.drawn}

    def load_state_dict(self, state):
        self.drawn = state["drawn"]


def test_state_is_the_samplers_before_the_batch_drawn_ahead():
    prefetcher = Prefetcher(_Counter())
    prefetcher.next_batch()
    assert prefetcher.state_dict() == {"drawn": 1}  # the second batch is being drawn ahead
    prefetcher.load_state_dict({"drawn": 0})
    assert prefetcher.state_dict() == {"drawn": 0}


def test_a_batch_sampled_off_the_host_is_not_pinned_for_a_cuda_run():
    """A sampler that draws on the device hands back tensors that cannot be pinned; only a host
    batch is pinned (the meta device stands in for CUDA here)."""
    state, batch = Prefetcher(_Counter("meta"), device="cuda")._draw()
    assert state == {"drawn": 0} and batch.support_x.device.type == "meta"
