"""Property-based tests (hypothesis, derandomized so CI runs the same examples every time) of the episodic sampler and the fixed task lists: for any
split and episode shape they can serve, labels are in range, the classes of a task are
distinct, support and query never share an image, labels map to classes consistently, and the
same seed gives the same tasks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lil_meta.datasets.sampler import EpisodicSampler, SplitData, TaskList


def identity_split(sizes: list[int]) -> SplitData:
    """Image ``i`` carries its own index in two pixels (``i // 256``, ``i % 256``)."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(sizes)])
    ids = torch.arange(len(labels))
    images = torch.zeros(len(labels), 1, 2, 1, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = ids // 256, ids % 256
    return SplitData(images, labels, "prop")


def image_ids(x: torch.Tensor) -> torch.Tensor:
    pixels = (x * 255).round().long()
    return pixels[..., 0, 0, 0] * 256 + pixels[..., 0, 1, 0]


@st.composite
def episodes(draw):
    way = draw(st.integers(1, 5))
    shot, query = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    extra = draw(st.integers(0, 4))  # classes beyond `way`, some too small to be used
    sizes = [draw(st.integers(shot + query, shot + query + 5)) for _ in range(way)]
    sizes += [draw(st.integers(1, shot + query + 5)) for _ in range(extra)]
    order = draw(st.permutations(range(len(sizes))))
    return [sizes[i] for i in order], way, shot, query, draw(st.integers(1, 4)), draw(st.integers(0, 2**31))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(episodes())
def test_sampled_tasks_are_well_formed(episode):
    sizes, way, shot, query, meta_batch, seed = episode
    split = identity_split(sizes)
    batch = EpisodicSampler(split, way, shot, query, meta_batch, seed=seed).next_batch()
    assert batch.support_x.shape[:2] == (meta_batch, way * shot)
    assert batch.query_x.shape[:2] == (meta_batch, way * query)
    for t in range(meta_batch):
        sy, qy = batch.support_y[t], batch.query_y[t]
        assert sy.min() >= 0 and sy.max() < way and qy.min() >= 0 and qy.max() < way
        s_ids, q_ids = image_ids(batch.support_x[t]), image_ids(batch.query_x[t])
        assert len(set(s_ids.tolist()) | set(q_ids.tolist())) == way * (shot + query)  # all distinct
        s_cls, q_cls = split.labels[s_ids], split.labels[q_ids]
        mapping = {int(label): int(cls) for label, cls in zip(sy, s_cls, strict=True)}
        assert len(set(mapping.values())) == way  # distinct classes, one per label
        assert all(mapping[int(label)] == int(cls) for label, cls in zip(qy, q_cls, strict=True))
        assert all(sizes[c] >= shot + query for c in mapping.values())  # only classes that can serve


@settings(max_examples=30, deadline=None, derandomize=True)
@given(episodes())
def test_the_same_seed_gives_the_same_tasks(episode):
    sizes, way, shot, query, meta_batch, seed = episode
    split = identity_split(sizes)
    a, b = (EpisodicSampler(split, way, shot, query, meta_batch, seed=seed) for _ in range(2))
    for _ in range(2):
        for x, y in zip(a.next_batch(), b.next_batch(), strict=True):
            assert torch.equal(x, y)
    tasks = TaskList(split, way, shot, query, num_tasks=5, seed=seed)
    first = [image_ids(b.support_x) for b in tasks.batches(2)]
    again = [image_ids(b.support_x) for b in TaskList(split, way, shot, query, 5, seed=seed).batches(5)]
    assert torch.equal(torch.cat(first), torch.cat(again))  # independent of the batch size
