"""Episodic sampling: task structure, reproducibility, resumption and clear errors.

The split used here stores each image's own index in its pixels, so every sampled image can be
traced back to the exact example it came from.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lil_meta.datasets import (
    EpisodicSampler,
    SplitData,
    TaskBatch,
    TaskList,
    nearest_class_mean_accuracy,
)
from lil_meta.engine.errors import DataError

WAY, SHOT, QUERY = 5, 2, 3


def indexed_split(sizes: list[int], name: str = "toy/train") -> SplitData:
    """A split whose image ``i`` holds ``i // 256`` and ``i % 256`` in its two pixels."""
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    idx = torch.arange(len(labels))
    images = torch.stack([idx // 256, idx % 256], dim=1).to(torch.uint8).view(-1, 1, 1, 2)
    return SplitData(images, labels, name)


def decode(x: torch.Tensor) -> torch.Tensor:
    """Image indices ``[B, n]`` from float images ``[B, n, 1, 1, 2]``."""
    px = (x * 255).round().long().flatten(2)
    return px[..., 0] * 256 + px[..., 1]


@pytest.fixture
def split() -> SplitData:
    return indexed_split([12] * 20 + [4] * 5)


def test_split_data_index(split):
    assert split.num_classes == 25
    assert split.class_sizes().tolist() == [12] * 20 + [4] * 5
    for c, idx in enumerate(split.class_index):
        assert (split.labels[idx] == c).all()
    with pytest.raises(DataError, match="toy: images must be a uint8"):
        SplitData(split.images.float(), split.labels, "toy")


def test_shapes_and_labels(split):
    batch = EpisodicSampler(split, WAY, SHOT, QUERY, meta_batch=4, seed=0).next_batch()
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (4, WAY * SHOT, 1, 1, 2)
    assert batch.query_x.shape == (4, WAY * QUERY, 1, 1, 2)
    assert batch.support_x.dtype == torch.float32
    assert 0.0 <= float(batch.support_x.min()) and float(batch.query_x.max()) <= 1.0
    assert batch.way == WAY and TaskBatch(*batch, way=WAY).way == WAY  # passes the full check
    for y, per_class in ((batch.support_y, SHOT), (batch.query_y, QUERY)):
        assert y.dtype == torch.int64
        assert (torch.bincount(y.flatten(), minlength=WAY) == 4 * per_class).all()
        assert int(y.min()) == 0 and int(y.max()) == WAY - 1


def test_task_structure(split):
    sampler = EpisodicSampler(split, WAY, SHOT, QUERY, meta_batch=8, seed=1)
    for _ in range(5):
        batch = sampler.next_batch()
        s_idx, q_idx = decode(batch.support_x), decode(batch.query_x)
        for t in range(batch.num_tasks):
            s_cls, q_cls = split.labels[s_idx[t]], split.labels[q_idx[t]]
            mapping = {}
            for cls, lab in zip(torch.cat([s_cls, q_cls]).tolist(),
                                torch.cat([batch.support_y[t], batch.query_y[t]]).tolist(), strict=True):
                assert mapping.setdefault(lab, cls) == cls
            assert len(set(mapping.values())) == WAY
            assert all(split.class_sizes()[c] >= SHOT + QUERY for c in mapping.values())
            everything = torch.cat([s_idx[t], q_idx[t]])
            assert len(set(everything.tolist())) == len(everything)


def test_relabelling_is_random(split):
    sampler = EpisodicSampler(split, WAY, SHOT, QUERY, meta_batch=16, seed=2)
    batch = sampler.next_batch()
    first = split.labels[decode(batch.support_x)[:, 0]]
    smallest = split.labels[decode(batch.support_x)].min(dim=1).values
    assert (first != smallest).any()
    assert len(set(first.tolist())) > 4


def test_determinism(split):
    a = EpisodicSampler(split, WAY, SHOT, QUERY, 4, seed=3).next_batch()
    b = EpisodicSampler(split, WAY, SHOT, QUERY, 4, seed=3).next_batch()
    c = EpisodicSampler(split, WAY, SHOT, QUERY, 4, seed=4).next_batch()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.support_x, c.support_x)


def test_state_dict_round_trip(split):
    sampler = EpisodicSampler(split, WAY, SHOT, QUERY, 4, seed=5)
    for _ in range(3):
        next(sampler)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    expected = sampler.next_batch()
    resumed = EpisodicSampler(split, WAY, SHOT, QUERY, 4, seed=99)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    got = next(iter(resumed))
    assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))
    assert resumed.seed == 5


def test_task_list_is_fixed_across_batch_sizes(split):
    tasks = TaskList(split, WAY, SHOT, QUERY, num_tasks=10, seed=0)
    assert len(tasks) == 10
    sizes = [b.num_tasks for b in tasks.batches(4)]
    assert sizes == [4, 4, 2]
    by_one = [torch.cat(x) for x in zip(*tasks.batches(1), strict=True)]
    by_four = [torch.cat(x) for x in zip(*tasks.batches(4), strict=True)]
    again = [torch.cat(x) for x in zip(*TaskList(split, WAY, SHOT, QUERY, 10, seed=0).batches(7), strict=True)]
    for x, y, z in zip(by_one, by_four, again, strict=True):
        assert torch.equal(x, y) and torch.equal(x, z)
    first_of_longer = next(TaskList(split, WAY, SHOT, QUERY, 20, seed=0).batches(10))
    assert torch.equal(first_of_longer.support_x, by_one[0])
    other = next(TaskList(split, WAY, SHOT, QUERY, 10, seed=1).batches(10))
    assert not torch.equal(other.support_x, by_one[0])


def test_impossible_episodes_raise_data_error():
    split = indexed_split([20] * 400, "glyphs/test")
    message = (r"glyphs/test: a 5-way task needs 5 classes with >= 35 images \(shot 20 \+ query 15\); "
               r"the split has 400 classes with 20 images each")
    with pytest.raises(DataError, match=message):
        EpisodicSampler(split, 5, 20, 15, meta_batch=4)
    with pytest.raises(DataError, match=message):
        TaskList(split, 5, 20, 15, num_tasks=10)
    with pytest.raises(DataError, match="glyphs/test: a 401-way task needs 401 classes"):
        EpisodicSampler(split, 401, 1, 1, meta_batch=1)
    uneven = indexed_split([8] * 3 + [3] * 10, "toy/val")
    with pytest.raises(DataError, match="toy/val: .*13 classes with 3..8 images each, 3 of them with >= 6"):
        TaskList(uneven, 5, 3, 3, num_tasks=1)
    with pytest.raises(DataError, match="toy/val: shot must be a positive integer"):
        EpisodicSampler(uneven, 2, 0, 3, meta_batch=1)


def _tensor_ops_per_batch(sampler: EpisodicSampler) -> int:
    next(sampler)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        next(sampler)
    return sum(event.name.startswith("aten::") for event in prof.events())


def test_sampling_is_a_fixed_number_of_tensor_ops_whatever_the_batch():
    """Drawing a meta-batch is tensor indexing, not a loop over tasks or images: its number of
    tensor operations stays the same from 10 images per batch to 32,000 (a count, not a timing,
    so a busy machine cannot fail it)."""
    split = SplitData(torch.randint(0, 256, (20000, 1, 28, 28), dtype=torch.uint8),
                      torch.arange(1000).repeat_interleave(20), "speed/train")
    small = _tensor_ops_per_batch(EpisodicSampler(split, 5, 1, 1, meta_batch=1, seed=0))
    large = _tensor_ops_per_batch(EpisodicSampler(split, 50, 19, 1, meta_batch=32, seed=0))
    assert 0 < small < 400 and large < 2 * small, (small, large)  # a per-image loop: >= 32,000


def test_nearest_class_mean_accuracy():
    means = torch.eye(3).view(3, 1, 1, 3)
    support_y = torch.tensor([[0, 0, 1, 1, 2, 2]])
    support_x = means[support_y[0]].unsqueeze(0) + 0.01 * torch.randn(1, 6, 1, 1, 3)
    query_y = torch.tensor([[2, 1, 0, 0]])
    right = TaskBatch(support_x, support_y, means[query_y[0]].unsqueeze(0), query_y)
    wrong = right._replace(query_y=torch.tensor([[1, 1, 2, 0]]))
    acc = nearest_class_mean_accuracy(TaskBatch(*(torch.cat(x) for x in zip(right, wrong, strict=True))))
    assert acc.shape == (2,)
    assert acc.tolist() == [1.0, 0.5]
