#!/usr/bin/env python
"""Prepare a benchmark once: decode, resize and cache it, then print the manifest summary.

    python tools/prepare_data.py mini_imagenet /data/miniImageNet
    python tools/prepare_data.py omniglot /data/omniglot --image-size 28
    python tools/prepare_data.py cifar_fs /data/cifar --cache-dir /fast/cache --force
    python tools/prepare_data.py cub /data/CUB --download
    python tools/prepare_data.py fc100 /data/cifar --download --mirror http://mirror.local/lil

``--download`` first fetches the dataset's published files into ROOT, verifies their checksums
and unpacks them where the reader looks (:mod:`datasets.download`): ``--mirror URL`` (or
``$LIL_DATA_MIRROR``) fetches every file from ``URL/<file name>`` instead, ``--checksums FILE``
(JSON: file name → ``"md5:…"`` or ``"sha256:…"``) replaces the expected hashes. A file already
there and verified is not fetched again. The cache goes to ``ROOT/.lil_cache/<name>-<size>px/`` (or ``--cache-dir``) and is what training
loads (``data.name=NAME data.root=ROOT``, same ``data.image_size``). Running it again verifies
the checksums and only rebuilds a missing or corrupt cache (``--force`` always rebuilds).
Bad input, and any download fault (HTTP error, refused connection, timeout, wrong checksum,
corrupt archive, full disk), ends with ``error: <message>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from lil_meta.datasets import build_dataset
from lil_meta.datasets.cache import CachedDataset
from lil_meta.datasets.download import MIRROR_ENV, fetch, load_checksums
from lil_meta.engine.errors import UserInputError
from lil_meta.engine.registry import DATASETS


def _reader_args(pairs: list[str]) -> dict:
    """``--arg KEY=VALUE`` pairs as reader arguments, each value read as YAML (``3``, ``false``)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--arg {pair!r}: expected KEY=VALUE, e.g. --arg num_train=1100")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


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
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a reader argument, as data.args.KEY in a config (repeatable), "
                             "e.g. --arg split_file=my_split.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--download", action="store_true",
                        help="first fetch, verify and unpack the dataset's files into ROOT")
    parser.add_argument("--mirror", default=None, metavar="URL",
                        help=f"with --download: fetch every file from URL/<file name> "
                             f"(default: ${MIRROR_ENV}, else the public sources)")
    parser.add_argument("--checksums", default=None, metavar="FILE",
                        help='with --download: JSON of file name -> "md5:..." / "sha256:..." '
                             "replacing the expected hashes")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="with --download: seconds to wait for a server (default 60)")
    parser.add_argument("--retries", type=int, default=2,
                        help="with --download: new tries after a failed transfer (default 2)")
    args = parser.parse_args(argv)
    try:
        if args.name not in readers:
            DATASETS.get(args.name, "data")  # unknown name: the registry's message
            raise UserInputError(f"{args.name}: not a prepared benchmark (choose one of: "
                                 f"{', '.join(readers)})")
        if args.download:
            checksums = load_checksums(args.checksums) if args.checksums else None
            fetch(args.name, args.root, mirror=args.mirror, checksums=checksums,
                  timeout=args.timeout, retries=args.retries,
                  progress=not args.no_progress and sys.stderr.isatty(),
                  say=lambda line: print(line, flush=True))
        elif args.mirror or args.checksums:
            raise UserInputError("--mirror and --checksums apply to --download; add --download")
        spec = {"name": args.name, "root": args.root, "image_size": args.image_size,
                "args": {**_reader_args(args.arg), "rebuild": args.force,
                         "progress": not args.no_progress,
                         **({"cache_dir": args.cache_dir} if args.cache_dir else {})}}
        start = time.perf_counter()
        data = build_dataset(spec)
        print(data.summary())
        print(f"ready in {time.perf_counter() - start:.1f}s; train with "
              f"data.name={args.name} data.root={args.root} "
              f"data.image_size={data.image_size}"
              + "".join(f" data.args.{pair.strip()}" for pair in args.arg))
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-written is left in ROOT, and running the same "
              "command again restarts what was cut short", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
