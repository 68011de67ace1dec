#!/usr/bin/env python
"""Plot the inner loop's linearity against iteration for several runs: PC and AC (paper Fig. 2),
the Hessian ratio of eq. 5 (``hess_ratio``) and how close the adapted network is to its kernel
predictor (``lin_err``, ``lin_agree``, ``lin_acc``; docs/design.md §1).

    python tools/plot_linearity.py output/maml_5shot output/maml_lil_5shot -o docs/linearity.png
    python tools/plot_linearity.py output/builtin/maml_5shot output/builtin/maml_lil_5shot  # seeds

Reads each run's ``metrics.jsonl``; one curve per run, labelled by its row in the tables
(``MAML + SHOT (5)``, from its ``config.yaml`` as ``tools/make_table.py`` labels it; the folder
name where there is none, or where two runs would share a label), or by ``--labels``. A folder
without ``metrics.jsonl`` whose subfolders are runs (a sweep's ``CONFIG/seedS``) is one curve:
the mean over its runs, with a band of ± one standard deviation.
PC = 1 means a straight inner-loop trajectory, AC = 1 a constant gradient norm, and
``hess_ratio`` = 0 an inner loop without curvature along its steps (at 1 the curvature takes back
the whole first-order decrease of the support loss). ``lin_err`` = 0 and ``lin_agree`` = 1 mean
the adapted network classifies exactly like f⁰ + J·(θˢ − θ⁰); ``lin_acc`` is that kernel
predictor's query accuracy. Runs from before these metrics leave their panels empty ("—" in the
``--from-iter`` table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from lil_meta.tools.results import row_label  # noqa: E402

# (key, panel title, the value of a linear inner loop or None)
METRICS = (("pc", "PC (phase consistency, eq. 3)", 1.0), ("ac", "AC (amplitude consistency, eq. 4)", 1.0),
           ("hess_ratio", "Hessian ratio hₖ (eq. 5), mean over steps", 0.0),
           ("lin_err", "lin_err ‖fˢ − f_lin‖ / ‖fˢ − f⁰‖", 0.0),
           ("lin_agree", "lin_agree: argmax f_lin = argmax fˢ", 1.0),
           ("lin_acc", "lin_acc: the kernel predictor's query accuracy", None))


def read_series(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (iterations, values)}`` for PC and AC from ``run_dir/metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {run_dir} a run folder?)")
    series: dict[str, tuple[list[int], list[float]]] = {key: ([], []) for key, *_ in METRICS}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        for key, *_ in METRICS:
            if key in record:
                try:
                    series[key][0].append(int(record["iter"]))
                    series[key][1].append(float(record[key]))
                except KeyError:
                    raise ValueError(f"{path}:{number}: a '{key}' value without its 'iter'") from None
                except (TypeError, ValueError):
                    raise ValueError(f"{path}:{number}: 'iter' {record['iter']!r} or '{key}' {record[key]!r} "
                                     "is not a number") from None
    if not any(its for its, _ in series.values()):
        raise ValueError(f"{path}: no 'pc', 'ac' or 'hess_ratio' values logged")
    return series


def curves(folder: Path) -> dict[str, tuple[list[int], np.ndarray, np.ndarray | None]]:
    """``{metric: (iterations, mean, std or None)}`` of one run, or of the runs in ``folder``
    (the iterations they all logged)."""
    if (folder / "metrics.jsonl").is_file() or not folder.is_dir():
        return {key: (its, np.array(vals), None) for key, (its, vals) in read_series(folder).items()}
    runs = sorted(p for p in folder.iterdir() if (p / "metrics.jsonl").is_file())
    if not runs:
        raise FileNotFoundError(f"{folder / 'metrics.jsonl'}: not found (is {folder} a run folder?)")
    per_run = [read_series(run) for run in runs]
    out = {}
    for key, *_ in METRICS:
        common = sorted(set.intersection(*(set(s[key][0]) for s in per_run)))
        table = np.array([[dict(zip(*s[key], strict=True))[i] for i in common] for s in per_run])
        out[key] = (common, table.mean(0) if common else np.array([]), table.std(0, ddof=1) if len(runs) > 1 else None)
    return out


def window_table(runs: list[Path], labels: list[str], first_iter: int) -> str:
    """Markdown: per run (or group of seeds), each metric averaged over the logging steps at or
    after ``first_iter``; for a group, the mean ± std over its seeds of those averages."""
    lines = ["| run | seeds | " + " | ".join(key for key, *_ in METRICS) + " |",
             "| --- | ---: |" + " ---: |" * len(METRICS)]
    for run, label in zip(runs, labels, strict=True):
        members = [run] if (run / "metrics.jsonl").is_file() else sorted(
            p for p in run.iterdir() if (p / "metrics.jsonl").is_file())
        cells = []
        for key, *_ in METRICS:
            windows = [[v for i, v in zip(*read_series(m)[key], strict=True) if i >= first_iter] for m in members]
            per_seed = [float(np.mean(w)) for w in windows if w]
            spread = f" ± {np.std(per_seed, ddof=1):.3f}" if len(per_seed) > 1 else ""
            cells.append(f"{np.mean(per_seed):.3f}{spread}" if per_seed else "—")
        lines.append(f"| {label} | {len(members)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_labels(runs: list[Path]) -> list[str]:
    """Each run's table row from its ``config.yaml`` (a group's first seed's); the folder name
    where it has none or cannot be read, and for every run whose row another run shares."""
    labels = []
    for run in runs:
        configs = [run / "config.yaml", *sorted(run.glob("*/config.yaml"))] if run.is_dir() else []
        try:
            first = next(c for c in configs if c.is_file())
            labels.append(row_label(OmegaConf.load(first)).label)
        except (StopIteration, OSError, ValueError, AttributeError, KeyError, TypeError, OmegaConfBaseException):
            labels.append(run.name)
    return [label if labels.count(label) == 1 else run.name for run, label in zip(runs, labels, strict=True)]


def plot(runs: list[Path], labels: list[str], output: Path) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.6))
    axes = axes.flatten()
    for run, label in zip(runs, labels, strict=True):
        for ax, (key, *_) in zip(axes, METRICS, strict=True):
            its, mean, std = curves(run)[key]
            if its:
                line, = ax.plot(its, mean, label=label)
                if std is not None:
                    ax.fill_between(its, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    for ax, (_, title, reference) in zip(axes, METRICS, strict=True):
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
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
    parser.add_argument("--labels", nargs="+",
                        help="one label per run (default: each run's table row, else its folder name)")
    parser.add_argument("--from-iter", type=int, metavar="N",
                        help="also print each metric averaged over the logging steps from iteration N on")
    args = parser.parse_args(argv)
    labels = args.labels or default_labels(args.runs)
    if len(labels) != len(args.runs):
        print(f"error: --labels: expected {len(args.runs)} labels, got {len(labels)}", file=sys.stderr)
        return 2
    if args.output.is_dir():
        print(f"error: -o {args.output}: is a folder; expected the PNG file to write", file=sys.stderr)
        return 2
    try:
        out = plot(args.runs, labels, args.output)
        if args.from_iter is not None:
            print(window_table(args.runs, labels, args.from_iter), end="")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: -o {args.output}: cannot write it ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
