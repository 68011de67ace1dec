#!/usr/bin/env python
"""Weight fingerprints of short training runs: a refactor that changes no number keeps them.

    python benchmarks/fingerprint.py --out fingerprints.json            # record
    python benchmarks/fingerprint.py --compare benchmarks/fingerprints.json   # check against a record

Each row trains ``tools/train_net.py`` for 20 iterations on the built-in glyphs data with a
narrow Conv4 (``model.backbone.hidden=8``), one intra-op thread, on both engines: MAML, MAML +
LIL, FOMAML + LIL pretraining (10 iterations of pretraining, teacher included), ANIL + LIL,
BOIL + LIL, Meta-SGD (per-element learned rates) and MAML + SHOT. The fingerprint of a row is
the sha256 of every tensor of its final state dict. ``--compare`` exits 1 and names the rows
whose weights moved; runs are made in a temporary folder and the command line of each is the
one a user types, so the script outlives refactors of the Python API.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["model.backbone.hidden=8", "solver.max_iter=20", "test.tasks=5", "test.val_tasks=5",
          "test.eval_period=1000", "solver.checkpoint_period=1000", "log.period=10", "log.tensorboard=false"]
ROWS = {
    "maml": ["configs/maml_5shot.yaml"],
    "maml_lil": ["configs/maml_lil_5shot.yaml"],
    "fomaml_lil_pretrain": ["configs/fomaml_lil_5shot.yaml", "pretrain.iters=10"],
    "anil_lil": ["configs/anil_lil_5shot.yaml"],
    "boil_lil": ["configs/boil_lil_5shot.yaml"],
    "meta_sgd": ["configs/maml_5shot.yaml", "algorithm.rates.mode=per_element", "algorithm.rates.learn=true"],
    "maml_shot": ["configs/maml_shot_5shot.yaml"],
}
ENGINES = ("loop", "vmap")


def fingerprint(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for k, v in sorted(state.items())}


def run_row(name: str, engine: str, folder: Path) -> dict[str, str]:
    config, *own = ROWS[name]
    out = folder / f"{name}_{engine}"
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(ROOT / config),
           "--output-dir", str(out), *COMMON, *own, f"algorithm.execution.engine={engine}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"error: {name} ({engine}) failed:\n{proc.stderr[-2000:]}")
    return fingerprint(torch.load(out / "model_final.pth", weights_only=True)["model"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here")
    parser.add_argument("--compare", type=Path, help="compare with the fingerprints in this file")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        prints = {f"{name}/{engine}": run_row(name, engine, Path(tmp)) for name in args.rows for engine in ENGINES}
    if args.out:
        args.out.write_text(json.dumps({"commit": commit, "torch": torch.__version__, "rows": prints}, indent=1) + "\n")
    if not args.compare:
        print(json.dumps(prints, indent=1))
        return 0
    recorded = json.loads(args.compare.read_text())
    moved = [row for row, values in prints.items() if recorded["rows"].get(row) != values]
    for row in prints:
        print(f"{row:28s} {'moved' if row in moved else 'bit-identical'} (against {recorded['commit']})")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
