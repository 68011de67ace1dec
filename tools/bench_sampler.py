#!/usr/bin/env python
"""Episodic-sampling throughput against meta-training throughput, in one process.

    python tools/bench_sampler.py [--image-size 84] [--classes 64] [--per-class 600] [--device cpu]

Builds a miniImageNet-shaped split in memory (``classes`` × ``per_class`` uint8 RGB images,
random pixels), then times ``EpisodicSampler.next_batch()`` for 5-way 5-shot 15-query
meta-batches of 4 tasks (index, gather, convert to float), and, for comparison, full
second-order MAML meta-training steps (Conv4, 3 inner steps) on the same batches. Prints
tasks/s for both and their ratio: sampling should never be the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from lil_meta.datasets.sampler import EpisodicSampler, SplitData
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--classes", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--maml-iters", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n, size = args.classes * args.per_class, args.image_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    split = SplitData(images, torch.arange(args.classes).repeat_interleave(args.per_class), "synthetic/train")
    sampler = EpisodicSampler(split, 5, 5, 15, args.meta_batch, seed=0)

    def sample():
        batch = sampler.next_batch().to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return batch

    for _ in range(5):
        sample()
    sample_s = timed(sample, 50)
    algo = GBML(Conv4(5, 3, size), inner_lr=0.5, inner_steps=3, metrics_period=0).to(device)
    batch = sample()

    def step():
        algo.zero_grad(set_to_none=True)
        algo(batch)["loss"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    maml_s = timed(step, args.maml_iters)
    row = {
        "images": n, "image_size": size, "meta_batch": args.meta_batch, "device": device.type,
        "sampling_tasks_per_s": args.meta_batch / sample_s, "maml_tasks_per_s": args.meta_batch / maml_s,
        "ratio": maml_s / sample_s,
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
