#!/usr/bin/env python
"""Collect finished runs into a paper-style table: mean ± std over seeds, best of each pair in bold.

    python tools/make_table.py output/builtin                         # print Markdown
    python tools/make_table.py output/builtin --markdown table.md --csv table.csv
    python tools/make_table.py output/builtin --metric test_acc_init  # θ⁰ without adaptation
    python tools/make_table.py output/builtin --paired                # + paired differences
    python tools/make_table.py output/builtin --run-time              # what the runs cost

Arguments are run folders or folders holding them (searched recursively for ``config.yaml``).
Rows are algorithm ± LIL and shots (``MAML + LIL (5)``), columns the datasets or
``train→test`` pairs, labelled from each run's saved config (:mod:`tools.results`); runs that
differ only in their seed form one cell. In Markdown the better of a baseline and its LIL
variants is bold in each column; ties are all bold. ``--metric`` picks the ``results.json``
entry: ``test_acc`` (final weights; the default), ``best_test_acc`` (best on validation) or
``test_acc_init``. Unfinished runs are listed and left out.

``--paired`` adds a second table: each LIL variant against its baseline (LIL-init against
Random-init, and the reference MAML or FOMAML of ``tools/reference_maml.py`` against the
framework's) over the seeds both ran — the mean of the per-seed differences, their standard
deviation, and the 95% confidence interval of the mean difference from Student's t with n − 1
degrees of freedom. A CI that covers 0 does not separate the two.

``--run-time`` adds what the finished runs cost: per cell the sum and mean of each run's
``wall_time_s`` (build, train and test; runs that resumed count their earlier time too), and
the total, to size a study before running it on more seeds or another machine.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scipy import stats  # noqa: E402

from lil_meta.engine.errors import UserInputError, exit_with  # noqa: E402
from lil_meta.engine.fileio import atomic_write  # noqa: E402
from lil_meta.tools.results import cells, find_runs  # noqa: E402

METRICS = ("test_acc", "best_test_acc", "test_acc_init")


def _fmt(cell) -> str:
    std = "n/a" if math.isnan(cell.std) else f"{cell.std:.2f}"
    return f"{cell.mean:.2f} ± {std}"


def markdown(rows, columns, table) -> str:
    """The table; in each column the best mean (to the printed 2 decimals) of a family is bold
    when the family has more than one row there."""
    seeds = max((len(c.values) for c in table.values()), default=0)
    family = {row.label: row.family for row in rows}
    means: dict[tuple[str, str], list[float]] = {}
    for (label, col), cell in table.items():
        means.setdefault((family[label], col), []).append(round(cell.mean, 2))
    lines = ["| | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for row in rows:
        out = []
        for col in columns:
            cell = table.get((row.label, col))
            if cell is None:
                out.append("")
                continue
            text = _fmt(cell) + ("" if len(cell.values) == seeds else f" (n={len(cell.values)})")
            rivals = means[(row.family, col)]
            out.append(f"**{text}**" if len(rivals) > 1 and round(cell.mean, 2) == max(rivals) else text)
        lines.append(f"| {row.label} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def paired_rows(rows, columns, table) -> list[tuple[str, str, str, list[float]]]:
    """``(variant, baseline, column, per-seed differences)`` for every variant of a family (and
    the reference runs) whose baseline ran at least two of the same seeds."""
    baselines = {row.family: row.label for row in rows  # LIL-init's baseline is Random-init
                 if row.label == row.family or row.label.startswith("Random-init")}
    pairs = [(row.label, baselines[row.family]) for row in rows
             if row.family in baselines and row.label != baselines[row.family]]
    pairs += [(row.label, row.label.replace(" (reference)", "")) for row in rows if " (reference)" in row.label]
    out = []
    for variant, baseline in pairs:
        for col in columns:
            a, b = table.get((variant, col)), table.get((baseline, col))
            if a is None or b is None:
                continue
            theirs = dict(zip(b.seeds, b.values, strict=True))
            diffs = [v - theirs[s] for s, v in zip(a.seeds, a.values, strict=True) if s in theirs]
            if len(diffs) >= 2:
                out.append((variant, baseline, col, diffs))
    return out


def paired_markdown(pairs) -> str:
    lines = ["| comparison | column | seeds | difference (mean ± std) | 95% CI |", "| --- | --- | ---: | ---: | ---: |"]
    for variant, baseline, col, diffs in pairs:
        n, mean, std = len(diffs), statistics.fmean(diffs), statistics.stdev(diffs)
        half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
        covers = " (covers 0)" if mean - half <= 0 <= mean + half else ""
        lines.append(f"| {variant} − {baseline} | {col} | {n} | {mean:+.2f} ± {std:.2f} | "
                     f"[{mean - half:+.2f}, {mean + half:+.2f}]{covers} |")
    return "\n".join(lines) + "\n"


def _with_run_time(record):
    """Early runs of tools/reference_maml.py wrote ``train_seconds`` only, which leaves out the
    set-up before training (reading the config and the cached data)."""
    if "wall_time_s" in record.results or "train_seconds" not in record.results:
        return record
    return dataclasses.replace(record, results={**record.results, "wall_time_s": record.results["train_seconds"]})


def run_time_markdown(rows, columns, table) -> str:
    """Minutes of run time per cell (the sum and the mean over its runs), then the total."""
    lines = ["| run time | column | runs | sum (min) | per run (min) |", "| --- | --- | ---: | ---: | ---: |"]
    total = runs = 0
    for row in rows:
        for col in columns:
            cell = table.get((row.label, col))
            if cell is not None:
                total, runs = total + sum(cell.values), runs + len(cell.values)
                lines.append(f"| {row.label} | {col} | {len(cell.values)} | {sum(cell.values) / 60:.1f} | "
                             f"{cell.mean / 60:.1f} |")
    lines.append(f"| all | | {runs} | {total / 60:.1f} ({int(total // 3600)} h {int(total % 3600 // 60):02d} min) | |")
    return "\n".join(lines) + "\n"


def csv_text(rows, columns, table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "column", "mean", "std", "n", "seeds", "values"])
    for row in rows:
        for col in columns:
            cell = table.get((row.label, col))
            if cell is not None:
                writer.writerow([row.label, col, f"{cell.mean:.4f}", "" if math.isnan(cell.std) else f"{cell.std:.4f}",
                                 len(cell.values), " ".join(map(str, cell.seeds)),
                                 " ".join(f"{v:.4f}" for v in cell.values)])
    return buf.getvalue()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or folders holding them")
    p.add_argument("--metric", choices=METRICS, default="test_acc")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown table here")
    p.add_argument("--csv", metavar="FILE", help="write the cells (mean, std, n, seeds, values) here")
    p.add_argument("--paired", action="store_true",
                   help="also print each variant minus its baseline, paired by seed, with a 95%% CI")
    p.add_argument("--run-time", action="store_true",
                   help="also print the run time of each cell (wall_time_s of results.json) and the total")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        records = find_runs(args.runs, finished_only=False)
        unfinished = [r for r in records if not r.results]
        rows, columns, table = cells([r for r in records if r.results], args.metric)
        if not table:
            raise UserInputError(f"no finished run reports '{args.metric}' under {', '.join(args.runs)}")
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(rows, columns, table)
    if args.paired:
        text += "\n" + paired_markdown(paired_rows(rows, columns, table))
    if args.run_time:
        timed = cells([_with_run_time(r) for r in records if r.results], "wall_time_s")
        text += "\n" + run_time_markdown(*timed)
    print(text, end="")
    for rec in unfinished:
        print(f"(unfinished, left out: {rec.folder})", file=sys.stderr)
    for flag, path, content in (("--markdown", args.markdown, text),
                                ("--csv", args.csv, args.csv and csv_text(rows, columns, table))):
        if path:
            try:
                if Path(path).is_dir():
                    raise IsADirectoryError(21, "is a folder; expected a file name")
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write(Path(path), lambda f, c=content: f.write(c.encode()))
            except (OSError, UserInputError) as exc:
                print(f"error: {flag} {path}: cannot write it ({getattr(exc, 'strerror', None) or exc})",
                      file=sys.stderr)
                return 2
    return 0


if __name__ == "__main__":
    exit_with(main)
