#!/usr/bin/env python
"""Validation accuracy against iteration, one curve per table row (paper Fig. 4), as a PNG.

    python tools/plot_curves.py output/builtin -o docs/val_curves.png --shot 5
    python tools/plot_curves.py output/maml_5shot output/maml_lil_5shot -o curves.png

Arguments are run folders or folders holding them. Runs are labelled like the rows of
``tools/make_table.py`` (``MAML + LIL (5)``); runs that differ only in their seed are averaged
(the line) with their min–max range shaded. One panel per column (dataset or train→test).
``--rows`` keeps the rows whose label contains any of the given strings (e.g. ``MAML``).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lil_meta.engine.errors import UserInputError  # noqa: E402
from lil_meta.tools.results import RunRecord, find_runs  # noqa: E402


def val_series(record: RunRecord) -> dict[int, float]:
    """``{iteration: val/acc}`` of one run."""
    return {int(m["iter"]): float(m["val/acc"]) for m in record.metrics() if "val/acc" in m}


def curves(records: list[RunRecord], shot: int | None = None, rows: list[str] | None = None):
    """``{column: {row: (iterations, mean, low, high)}}`` over the seeds of each row."""
    grouped: dict[str, dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        if shot is not None and int(rec.cfg.data.shot) != shot:
            continue
        label = rec.row.label
        if rows and not any(r in label for r in rows):
            continue
        series = val_series(rec)
        if series:
            grouped[rec.column][label].append(series)
    out: dict[str, dict[str, tuple]] = {}
    for column, by_row in grouped.items():
        out[column] = {}
        for label, runs in sorted(by_row.items()):
            iters = sorted(set.intersection(*(set(s) for s in runs)))
            values = [[s[i] for s in runs] for i in iters]
            out[column][label] = (iters, [sum(v) / len(v) for v in values], [min(v) for v in values],
                                  [max(v) for v in values])
    return out


def plot(data, output: Path, title: str | None = None) -> None:
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 4), squeeze=False)
    for ax, (column, by_row) in zip(axes[0], sorted(data.items()), strict=True):
        for label, (iters, mean, low, high) in by_row.items():
            (line,) = ax.plot(iters, mean, marker="o", markersize=3, label=label)
            ax.fill_between(iters, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title(column)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--shot", type=int, help="only runs with this many shots")
    p.add_argument("--rows", nargs="+", metavar="TEXT", help="only rows whose label contains one of these")
    p.add_argument("--title")
    args = p.parse_args(argv)
    try:
        data = curves(find_runs(args.runs, finished_only=False), args.shot, args.rows)
        if not data:
            raise UserInputError(f"no validation accuracy (val/acc) in the metrics of {', '.join(args.runs)}")
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plot(data, Path(args.output), args.title)
    print(f"wrote {args.output} ({sum(len(v) for v in data.values())} curves)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
