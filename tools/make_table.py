#!/usr/bin/env python
"""Collect finished runs into a paper-style table: mean ± std over seeds, best of each pair in bold.

    python tools/make_table.py output/builtin                         # print Markdown
    python tools/make_table.py output/builtin --markdown table.md --csv table.csv
    python tools/make_table.py output/builtin --metric test_acc_init  # θ⁰ without adaptation
    python tools/make_table.py output/builtin --paired                # + paired differences
    python tools/make_table.py output/builtin --pair "MAML + SHOT" "MAML + LIL"   # + one more pair
    python tools/make_table.py output/builtin --kernel                # + the kernel-predictor metrics
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
degrees of freedom. A CI that covers 0 does not separate the two. SHOT rows are paired both
with their baseline and with the same family's LIL row (``MAML + SHOT (5) − MAML + LIL (5)``).
``--pair METHOD BASELINE`` (repeatable; implies ``--paired``) adds any other pair of row labels;
without a ``(shots)`` suffix a label names its row at every shot.

``--kernel`` adds the kernel-predictor metrics of ``results.json`` (docs/design.md §1) beside the
network's own accuracy: per cell ``test_acc``, ``test_lin_acc``, ``test_lin_agree`` (percent) and
``test_lin_err``, each the mean ± std over the seeds that report it ("—" where none does; runs
from before the metrics lack the keys).

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
import re
import statistics
import sys
from pathlib import Path

from scipy import stats

from lil_meta.engine.errors import UserInputError, exit_with
from lil_meta.engine.fileio import atomic_write
from lil_meta.tools.results import cells, find_runs

METRICS = ("test_acc", "best_test_acc", "test_acc_init")
KERNEL_METRICS = (("test_acc", 2), ("test_lin_acc", 2), ("test_lin_agree", 2), ("test_lin_err", 3))  # (key, decimals)


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


def _at_shot(label: str, shot: str) -> str:
    """``label`` at ``shot`` (``" (5)"``) unless it names its shots itself."""
    return label if re.search(r" \(\d+\)$", label) else label + shot


def paired_rows(rows, columns, table, extra=()) -> list[tuple[str, str, str, list[float]]]:
    """``(variant, baseline, column, per-seed differences)`` for every variant of a family (and
    the reference runs) whose baseline ran at least two of the same seeds; each SHOT row also
    against its family's LIL row; then the ``(method, baseline)`` label pairs of ``extra``."""
    baselines = {row.family: row.label for row in rows  # LIL-init's baseline is Random-init
                 if row.label == row.family or row.label.startswith("Random-init")}
    pairs = [(row.label, baselines[row.family]) for row in rows
             if row.family in baselines and row.label != baselines[row.family]]
    pairs += [(row.label, row.label.replace(" (reference)", "")) for row in rows if " (reference)" in row.label]
    pairs += [(row.label, _at_shot(row.family[:row.family.rindex(" (")] + " + LIL", row.label[row.label.rindex(" ("):]))
              for row in rows if " + SHOT" in row.label and " + LIL" not in row.label]
    for method, baseline in extra:
        for row in rows:
            shot = row.label[row.label.rindex(" ("):]
            if row.label in (method, _at_shot(method, shot)):
                pairs.append((row.label, _at_shot(baseline, shot)))
    pairs = list(dict.fromkeys(pairs))
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


def kernel_markdown(records) -> str:
    """Per (row, column): the seeds, then each of :data:`KERNEL_METRICS` as mean ± std over the
    seeds that report it, ``(n=k)`` where that is fewer than the cell's seeds, "—" where none."""
    per_metric = {key: cells(records, key) for key, _ in KERNEL_METRICS}
    rows = {row.label: row for rs, _, _ in per_metric.values() for row in rs}
    columns = sorted({c for _, cs, _ in per_metric.values() for c in cs}, key=lambda c: (c.count("→"), c))
    lines = ["| | column | seeds | " + " | ".join(key for key, _ in KERNEL_METRICS) + " |",
             "| --- | --- | ---: |" + " ---: |" * len(KERNEL_METRICS)]
    for row in sorted(rows.values(), key=lambda r: r.order):
        for col in columns:
            found = [per_metric[key][2].get((row.label, col)) for key, _ in KERNEL_METRICS]
            seeds = {s for cell in found if cell is not None for s in cell.seeds}
            if not seeds:
                continue
            out = []
            for cell, (_, digits) in zip(found, KERNEL_METRICS, strict=True):
                if cell is None:
                    out.append("—")
                    continue
                std = "n/a" if math.isnan(cell.std) else f"{cell.std:.{digits}f}"
                short = "" if len(cell.values) == len(seeds) else f" (n={len(cell.values)})"
                out.append(f"{cell.mean:.{digits}f} ± {std}{short}")
            lines.append(f"| {row.label} | {col} | {len(seeds)} | " + " | ".join(out) + " |")
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
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("METHOD", "BASELINE"),
                   help="also pair these two rows by seed (labels, e.g. 'MAML + SHOT' 'MAML + LIL'); "
                        "implies --paired")
    p.add_argument("--kernel", action="store_true",
                   help="also print test_acc beside test_lin_acc, test_lin_agree and test_lin_err per cell")
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
        known = {name for row in rows for name in (row.label, re.sub(r" \(\d+\)$", "", row.label))}
        unknown = [label for pair in args.pair for label in pair if label not in known]
        if unknown:
            raise UserInputError(f"--pair: no row '{unknown[0]}' (rows: {', '.join(row.label for row in rows)})")
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(rows, columns, table)
    if args.paired or args.pair:
        text += "\n" + paired_markdown(paired_rows(rows, columns, table, args.pair))
    if args.kernel:
        try:  # two runs of one seed that only these metrics see (one of them lacks test_acc)
            text += "\n" + kernel_markdown([r for r in records if r.results])
        except UserInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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
