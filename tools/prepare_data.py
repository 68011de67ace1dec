#!/usr/bin/env python
"""Prepare a benchmark once: decode, resize and cache it, then print the manifest summary.

    python tools/prepare_data.py mini_imagenet /data/miniImageNet
    python tools/prepare_data.py omniglot /data/omniglot --image-size 28
    python tools/prepare_data.py cifar_fs /data/cifar --cache-dir /fast/cache --force

The cache goes to ``ROOT/.lil_cache/<name>-<size>px/`` (or ``--cache-dir``) and is what training
loads (``data.name=NAME data.root=ROOT``, same ``data.image_size``). Running it again verifies
the checksums and only rebuilds a missing or corrupt cache (``--force`` always rebuilds).
Bad input ends with ``error: <message>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from lil_meta.datasets import build_dataset
from lil_meta.datasets.cache import CachedDataset
from lil_meta.engine.errors import UserInputError
from lil_meta.engine.registry import DATASETS


def main(argv: list[str] | None = None) -> int:
    readers = [n for n in DATASETS.names()
               if isinstance(DATASETS.get(n)[0], type) and issubclass(DATASETS.get(n)[0], CachedDataset)]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help=f"dataset ({', '.join(readers)})")
    parser.add_argument("root", help="the folder holding the dataset as downloaded")
    parser.add_argument("--image-size", type=int, default=None,
                        help="cache image side (default: 84; omniglot 28)")
    parser.add_argument("--cache-dir", default=None, help="default: ROOT/.lil_cache")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.name not in readers:
            DATASETS.get(args.name, "data")  # unknown name: the registry's message
            raise UserInputError(f"{args.name}: not a prepared benchmark (choose one of: "
                                 f"{', '.join(readers)})")
        spec = {"name": args.name, "root": args.root, "image_size": args.image_size,
                "args": {"rebuild": args.force, "progress": not args.no_progress,
                         **({"cache_dir": args.cache_dir} if args.cache_dir else {})}}
        start = time.perf_counter()
        data = build_dataset(spec)
        print(data.summary())
        print(f"ready in {time.perf_counter() - start:.1f}s; train with "
              f"data.name={args.name} data.root={args.root} "
              f"data.image_size={data.image_size}")
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
