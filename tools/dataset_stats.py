"""Print how long the ``glyphs`` dataset takes to build, its split sizes, and the raw-pixel
nearest-class-mean accuracy on fixed test tasks: the floor a meta-learned model must clear.

    python tools/dataset_stats.py --image-size 28 --way 5 --shot 5 --tasks 600
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".cache/glyphs", help="cache directory")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0, help="dataset generation seed")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=600)
    args = parser.parse_args(argv)

    import torch

    from lil_meta.datasets import TaskList, nearest_class_mean_accuracy
    from lil_meta.datasets.glyphs import Glyphs
    from lil_meta.engine.errors import UserInputError

    try:
        start = time.perf_counter()
        data = Glyphs(root=args.root, image_size=args.image_size, seed=args.seed)
        how = "generated" if data.generated else "loaded from cache"
        print(f"glyphs {how} in {time.perf_counter() - start:.1f}s: {data.path}")
        for name, split in data.splits.items():
            sizes = split.class_sizes()
            print(f"  {name:5s}: {split.num_classes} classes x {int(sizes.min())}..{int(sizes.max())} "
                  f"images, {tuple(split.images.shape[1:])}")
        tasks = TaskList(data.split(args.split), args.way, args.shot, args.query, args.tasks, seed=0)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    acc = torch.cat([nearest_class_mean_accuracy(b) for b in tasks.batches(100)]) * 100
    ci = 1.96 * acc.std().item() / len(acc) ** 0.5 if len(acc) > 1 else float("nan")
    print(f"nearest-class-mean, raw pixels, {args.split} {args.way}-way {args.shot}-shot "
          f"{args.query}-query: {acc.mean().item():.2f} +- {ci:.2f} % over {len(acc)} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
