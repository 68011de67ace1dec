#!/usr/bin/env python
"""Plot the inner loop's linearity (PC and AC, paper Fig. 2) against iteration for several runs.

    python tools/plot_linearity.py output/maml_5shot output/maml_lil_5shot -o docs/linearity.png

Reads each run's ``metrics.jsonl``; one curve per run, labelled by its folder name (or
``--labels``). PC = 1 means a straight inner-loop trajectory, AC = 1 a constant gradient norm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = (("pc", "PC (phase consistency, eq. 3)"), ("ac", "AC (amplitude consistency, eq. 4)"))


def read_series(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (iterations, values)}`` for PC and AC from ``run_dir/metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {run_dir} a run folder?)")
    series: dict[str, tuple[list[int], list[float]]] = {key: ([], []) for key, _ in METRICS}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        for key, _ in METRICS:
            if key in record:
                series[key][0].append(int(record["iter"]))
                series[key][1].append(float(record[key]))
    if not any(its for its, _ in series.values()):
        raise ValueError(f"{path}: no 'pc' or 'ac' values logged")
    return series


def plot(runs: list[Path], labels: list[str], output: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, label in zip(runs, labels, strict=True):
        series = read_series(run)
        for ax, (key, _) in zip(axes, METRICS, strict=True):
            its, values = series[key]
            if its:
                ax.plot(its, values, label=label)
    for ax, (_, title) in zip(axes, METRICS, strict=True):
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("-o", "--output", type=Path, default=Path("linearity.png"), help="PNG to write")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        print(f"error: --labels: expected {len(args.runs)} labels, got {len(labels)}", file=sys.stderr)
        return 2
    try:
        out = plot(args.runs, labels, args.output)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
