"""Reading finished runs back: their config, results and metrics, labelled the way the paper's
tables label them (used by ``tools/make_table.py`` and ``tools/plot_curves.py``).

A run folder is one written by ``tools/train_net.py``: ``config.yaml``, ``results.json`` once it
finished, ``metrics.jsonl`` as it goes. Its *row* says what was trained — ``MAML (5)``,
``MAML + LIL (5)``, ``MAML + PC (1)`` (phase loss only), ``MAML + AC (1)`` (pseudo-amplitude only),
``FOMAML + LIL (5)`` (LIL pretraining, then FOMAML), ``MAML + SHOT (5)`` and
``MAML + SHOT (one-step) (5)`` (the ``shot`` and ``shot_one_step`` terms), ``Random-init (1)``/``LIL-init (1)``
(Table 1), ``ResNet-12 MAML (5)`` — and its *column* where: the dataset, or ``train→test`` for a cross-domain run.
Runs that differ only in ``seed`` share a cell; a second run of the same row, column and seed is
an error (two copies of a run made on different hosts need not agree: pass one study's folder).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lil_meta.engine.errors import UserInputError

__all__ = ["RunRecord", "Row", "Cell", "find_runs", "row_label", "column_label", "cells"]

ALGORITHMS = {"maml": "MAML", "fomaml": "FOMAML", "anil": "ANIL", "boil": "BOIL", "mamlpp": "MAML++",
              "reptile": "Reptile", "protonet": "ProtoNet",
              "reference_maml": "MAML (reference)", "reference_fomaml": "FOMAML (reference)"}  # tools/reference_maml.py
DATASETS = {"glyphs": "glyphs", "mini_imagenet": "miniImageNet", "tiered_imagenet": "tieredImageNet",
            "cub": "CUB", "cars": "Cars", "omniglot": "Omniglot", "cifar_fs": "CIFAR-FS"}
# row order within a shot: the Table 1 pair, then each algorithm's baseline and its variants
FAMILY_ORDER = ["init", "MAML (reference)", "MAML", "FOMAML (reference)", "FOMAML", "ANIL", "BOIL", "MAML++", "Reptile",
                "ProtoNet"]
VARIANT_ORDER = ["Random-init", "LIL-init", "", " + PC", " + AC", " + LIL", " + SHOT", " + SHOT (one-step)"]
BACKBONES = {"conv4": "", "resnet12": "ResNet-12 "}


@dataclass(frozen=True)
class Row:
    """A table row: its ``label``, the ``family`` a baseline shares with its LIL variants at the
    same shots (the bold marks the best of a family), and ``order``, its place among the rows."""

    label: str
    family: str
    order: tuple


@dataclass
class RunRecord:
    folder: Path
    cfg: DictConfig
    results: dict

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def row(self) -> Row:
        return row_label(self.cfg)

    @property
    def column(self) -> str:
        return column_label(self.cfg)

    def metrics(self) -> list[dict]:
        """The lines of ``metrics.jsonl`` (blank or half-written lines skipped)."""
        path = self.folder / "metrics.jsonl"
        lines = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object")
    return data


def find_runs(paths: list[str | Path], finished_only: bool = True) -> list[RunRecord]:
    """Every run folder at or under ``paths`` (a folder with ``config.yaml``), sorted by path.

    With ``finished_only`` only runs with a ``results.json``. A path that does not exist, or
    holds no run at all, is an error naming it.
    """
    records = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserInputError(f"{path}: no such folder")
        found = sorted(p.parent for p in path.rglob("config.yaml"))
        if not found:
            raise UserInputError(f"{path}: holds no run (no config.yaml at or below it)")
        for folder in found:
            results_file = folder / "results.json"
            if finished_only and not results_file.is_file():
                continue
            results = _read_json(results_file) if results_file.is_file() else {}
            records.append(RunRecord(folder, _read_config(folder / "config.yaml"), results))
    return records


def _read_config(path: Path) -> DictConfig:
    """A run's saved config; a file that is not one (garbled YAML, another program's config) is
    one :class:`UserInputError` naming it."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001  (YAML, OmegaConf, OS and decoding errors alike)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserInputError(f"{path}: not a readable run config ({first})") from None
    try:
        ok = isinstance(cfg, DictConfig) and all(OmegaConf.select(cfg, k) is not None for k in _RUN_KEYS)
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        raise UserInputError(f"{path}: not the config.yaml of a run of tools/train_net.py (it lacks one of "
                             f"{', '.join(_RUN_KEYS)})")
    return cfg


_RUN_KEYS = ("seed", "data.name", "data.shot", "model.backbone.name", "algorithm.name", "solver.max_iter",
             "losses")


def row_label(cfg: DictConfig) -> Row:
    """The row of a run's config: ``MAML + LIL (5)``, ``ResNet-12 ANIL (1)``, ``LIL-init (5)``…"""
    shot = int(cfg.data.shot)
    backbone = str(cfg.model.backbone.name)
    prefix = BACKBONES.get(backbone, f"{backbone} ")
    pretrain = int(cfg.get("pretrain", {}).get("iters", 0) or 0)
    algo = str(cfg.algorithm.name)
    terms = {str(spec.name) for spec in cfg.losses}
    phase, amplitude = "phase" in terms, "pseudo_amplitude" in terms
    shot_term = " + SHOT" if "shot" in terms else " + SHOT (one-step)" if "shot_one_step" in terms else ""
    if int(cfg.solver.max_iter) == 0 or pretrain >= int(cfg.solver.max_iter):
        family, name, variant = "init", "", "Random-init" if int(cfg.solver.max_iter) == 0 else "LIL-init"
        shot_term = ""
    else:
        family = name = ALGORITHMS.get(algo, algo)
        if pretrain or (phase and amplitude) or (phase and algo in ("anil", "boil")):
            variant = " + LIL"
        elif phase:
            variant = " + PC"
        elif amplitude:
            variant = " + AC"
        else:
            variant = ""
    # SHOT rows follow the LIL ones; a SHOT term on top of LIL's is labelled with both
    variants = (VARIANT_ORDER.index(shot_term or variant), VARIANT_ORDER.index(variant))
    variant += shot_term
    rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    order = (shot, prefix != "", prefix, rank, family, variants)
    return Row(f"{prefix}{name}{variant} ({shot})", f"{prefix}{family} ({shot})", order)


def column_label(cfg: DictConfig) -> str:
    """The dataset (``miniImageNet``) or, cross-domain, ``train→test``."""
    data = cfg.data
    if data.name == "cross_domain":
        train, test = data.args.get("train", {}), data.args.get("test", {})
        return f"{DATASETS.get(train.get('name'), train.get('name'))}→{DATASETS.get(test.get('name'), test.get('name'))}"
    return DATASETS.get(str(data.name), str(data.name))


@dataclass
class Cell:
    values: list[float]
    seeds: list[int]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n − 1); nan for a single seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan


def cells(records: list[RunRecord], metric: str = "test_acc"):
    """``(rows, columns, {(row label, column): Cell})``, rows (:class:`Row`) in the paper's order;
    runs that do not report ``metric`` are left out."""
    table: dict[tuple[str, str], Cell] = {}
    rows: dict[str, Row] = {}
    for rec in records:
        value = rec.results.get(metric)
        if value is None:
            continue
        row = rows.setdefault(rec.row.label, rec.row)
        cell = table.setdefault((row.label, rec.column), Cell([], []))
        if rec.seed in cell.seeds:
            raise UserInputError(f"{rec.folder}: a second run of '{row.label}' on {rec.column} with "
                                 f"seed {rec.seed}; pass each run folder once")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(f"{rec.folder / 'results.json'}: '{metric}' is {value!r}, not a number")
        cell.values.append(float(value))
        cell.seeds.append(rec.seed)
    columns = sorted({c for _, c in table}, key=lambda c: (c.count("→"), c))
    return sorted(rows.values(), key=lambda r: r.order), columns, table
