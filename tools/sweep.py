#!/usr/bin/env python
"""Run a grid of (config × seed [× column]) trainings, each into its own folder; skip finished ones.

    python tools/sweep.py configs/tables/builtin*.yaml --output-root output/builtin --jobs 2
    python tools/sweep.py --configs configs/maml_5shot.yaml configs/maml_lil_5shot.yaml \\
        --seeds 0 1 2 --output-root output/lil_vs_maml solver.max_iter=1000
    python tools/sweep.py configs/tables/table2.yaml --output-root /scratch/t2 \\
        --launcher slurm --partition gpu --gpus-per-node 1 --time 1440 data_root=/data

A sweep file (YAML) lists ``configs`` (paths relative to the repository's ``configs/``),
``seeds``, optional ``overrides`` applied to every run and optional ``columns`` — a mapping from
a column name (usually a dataset) to the overrides that make it. An entry of ``configs`` may
carry its own overrides, applied after the shared ones (and after those on the command line):
``- random_init_1shot: [solver.max_iter=0]`` keeps that run untrained whatever budget the
sweep sets. ``{data_root}`` in an override
is replaced by ``--data-root``. Each run is ``tools/train_net.py --config-file C seed=S …`` into
``OUTPUT_ROOT/[COLUMN/]CONFIG/seedS``: a folder with ``results.json`` is finished and skipped, one
with only a ``config.yaml`` was interrupted and is resumed (``--resume``), exactly. Optional
``trainer: reference_maml`` runs another script of ``tools/`` with the same command line (local
launcher only), and ``prefix: reference_`` puts the file's runs in ``PREFIXCONFIG/seedS``.
Optional ``env`` (a mapping) sets environment variables for every run of the file, e.g.
``ONEDNN_MAX_CPU_ISA: AVX2`` so that CPU hosts with and without AVX-512 compute the same.
Several sweep files in one command run as one grid (a study made of several files), as long as
no two runs share a folder. Runs start seed by seed (every config of seed 0, then of seed 1, …),
so a study stopped part-way holds whole paired seeds.

Launchers: ``local`` runs ``--jobs`` trainings at a time as ``tools/train_net.py`` subprocesses
(the cores split among them through ``OMP_NUM_THREADS``), with a progress bar and each run's
output in ``OUTPUT_ROOT/sweep_logs/``; ``slurm`` submits one SLURM job array through submitit and
returns — each job the engine's (:mod:`engine.slurm`: the run with ``--resume``, checkpointed and
requeued on preemption, as ``train_net.py --slurm`` submits it); ``slurm-local`` runs the same
array with submitit's local executor. Collect the results with
``tools/make_table.py OUTPUT_ROOT``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from lil_meta.engine.config import read_yaml_mapping
from lil_meta.engine.errors import ConfigError, UserInputError, exit_with

ROOT = Path(__file__).resolve().parent.parent

TRAIN_NET = ROOT / "tools" / "train_net.py"
CONFIGS = ROOT / "configs"
SWEEP_KEYS = {"configs", "seeds", "overrides", "columns", "trainer", "prefix", "env"}


@dataclass
class Run:
    """One training: a config file, a seed, the column it belongs to and its overrides."""

    config: Path
    seed: int
    out: Path
    column: str | None = None
    overrides: list[str] = field(default_factory=list)
    trainer: Path = TRAIN_NET
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.out.relative_to(self.out.parents[2 if self.column else 1]))

    @property
    def status(self) -> str:
        """``done`` (results.json), ``partial`` (started, to resume) or ``new``."""
        if (self.out / "results.json").is_file():
            return "done"
        return "partial" if (self.out / "config.yaml").is_file() else "new"

    def argv(self) -> list[str]:
        """The trainer's arguments for this run (train_net.py's command line)."""
        args = ["--config-file", str(self.config), "--output-dir", str(self.out)]
        if self.status == "partial":
            args.append("--resume")
        return [*args, f"seed={self.seed}", *self.overrides]


def _strings(value, where: str) -> list[str]:
    if not isinstance(value, (list, ListConfig)) or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return [str(v) for v in value]


def load_sweep(path: str | Path) -> dict:
    """A sweep file as ``{"configs", "seeds", "overrides", "columns", "trainer", "prefix", "env"}``
    (see the module doc)."""
    data = read_yaml_mapping(path, "sweep file")  # not found, unreadable, bad YAML, not a mapping: one line
    try:
        spec = OmegaConf.create(data)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: not a YAML mapping ({str(exc).splitlines()[0]})") from None
    unknown = set(spec.keys()) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(SWEEP_KEYS)}")
    for key in ("configs", "seeds"):
        if key not in spec:
            raise ConfigError(f"{path}: missing '{key}'")
    env = spec.get("env") or {}
    if not isinstance(env, (dict, DictConfig)) or not all(
            isinstance(v, (str, int)) and not isinstance(v, bool) for v in env.values()):
        raise ConfigError(f"{path}: env: expected a mapping NAME -> string, got {env!r}")
    columns = spec.get("columns") or {}
    if not isinstance(columns, (dict, DictConfig)):
        raise ConfigError(f"{path}: columns: expected a mapping name -> list of overrides")
    if not isinstance(spec.configs, ListConfig):
        raise ConfigError(f"{path}: configs: expected a list, got {spec.configs!r}")
    entries = []
    for item in spec.configs:
        if isinstance(item, DictConfig) and len(item) == 1:
            (name, extra), = item.items()
            entries.append((str(name), _strings(extra or [], f"{path}: configs.{name}")))
        elif isinstance(item, str):
            entries.append((item, []))
        else:
            raise ConfigError(f"{path}: configs: expected a name or {{name: [overrides]}}, got {item!r}")
    return {
        "configs": entries,
        "seeds": _seeds(spec.seeds, path),
        "overrides": _strings(spec.get("overrides") or [], f"{path}: overrides"),
        "columns": {str(k): _strings(v or [], f"{path}: columns.{k}") for k, v in columns.items()},
        "trainer": _trainer_path(str(spec.get("trainer") or "train_net"), path),
        "prefix": str(spec.get("prefix") or ""),
        "env": {str(k): str(v) for k, v in env.items()},
    }


def _seeds(value, path) -> list[int]:
    """The sweep file's ``seeds``: integers, each one a line naming the file otherwise."""
    out = []
    for item in _strings(value, f"{path}: seeds"):
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError(f"{path}: seeds: expected integers, got {item!r}") from None
    return out


def _trainer_path(name: str, where) -> Path:
    script = ROOT / "tools" / f"{name}.py"
    if "/" in name or not script.is_file():
        raise ConfigError(f"{where}: trainer: '{name}' is not a script of {ROOT / 'tools'}")
    return script


def _config_path(name: str) -> Path:
    for candidate in (Path(name), CONFIGS / name, CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"configs: '{name}' not found (as a path or under {CONFIGS})")


def expand(configs: list, seeds: list[int], output_root: str | Path, overrides=(), columns=None,
           data_root: str | None = None, trainer: Path = TRAIN_NET, prefix: str = "",
           env: dict[str, str] | None = None) -> list[Run]:
    """Every (column, config, seed) of the grid as a :class:`Run`, in that nesting order.

    ``configs`` items are names or ``(name, overrides of that config)`` pairs."""
    if not configs or not seeds:
        raise ConfigError("sweep: needs at least one config and one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"sweep: seeds repeat: {seeds}")
    configs = [(c, []) if isinstance(c, str) else (c[0], list(c[1])) for c in configs]
    stems = [_config_path(c).stem for c, _ in configs]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"sweep: two configs share a name (their run folders would clash): {stems}")

    def fill(items):
        items = list(items)
        if any("{data_root}" in o for o in items):
            if not data_root:
                raise ConfigError("sweep: the overrides use {data_root}; pass --data-root DIR")
            items = [o.replace("{data_root}", data_root) for o in items]
        return items

    root = Path(output_root)
    runs = []
    for column, column_overrides in (columns or {None: []}).items():
        for config, own in configs:
            path = _config_path(config)
            for seed in seeds:
                name = prefix + path.stem
                out = root / column / name if column else root / name
                runs.append(Run(path, seed, out / f"seed{seed}", column,
                                fill([*overrides, *own, *column_overrides]), trainer, dict(env or {})))
    return runs


def expand_files(paths: list[str], output_root: str | Path, opts=(), data_root: str | None = None) -> list[Run]:
    """The runs of several sweep files as one grid; two runs may not share a folder."""
    runs = []
    for path in paths:
        spec = load_sweep(path)
        runs += expand(spec["configs"], spec["seeds"], output_root, [*spec["overrides"], *opts],
                       spec["columns"], data_root, spec["trainer"], spec["prefix"], spec["env"])
    folders = [run.out for run in runs]
    clash = sorted({str(f) for f in folders if folders.count(f) > 1})
    if clash:
        raise ConfigError(f"sweep: two runs of {', '.join(paths)} share a folder: {clash[0]} "
                          f"(give one file a prefix)")
    return runs


def run_local(runs: list[Run], jobs: int, log_dir: Path) -> list[tuple[Run, int]]:
    """Run ``runs`` as subprocesses, ``jobs`` at a time; returns (run, exit code) in order."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))

    def one(run: Run) -> int:
        log = log_dir / (run.name.replace("/", "__") + ".log")
        with open(log, "w") as f:
            return subprocess.run([sys.executable, str(run.trainer), *run.argv()], cwd=ROOT, env={**env, **run.env},
                                  stdout=f, stderr=subprocess.STDOUT).returncode

    codes: dict[int, int] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(runs), desc="sweep", unit="run",
                                                             dynamic_ncols=True) as bar:
        futures = {pool.submit(one, run): i for i, run in enumerate(runs)}
        for future in as_completed(futures):
            i = futures[future]
            codes[i] = future.result()
            bar.update()
            bar.write(f"{'ok  ' if codes[i] == 0 else 'FAIL'} {runs[i].name}"
                      + ("" if codes[i] == 0 else f" (exit {codes[i]}, see {log_dir})"))
    return [(run, codes[i]) for i, run in enumerate(runs)]


def check_launcher(runs: list[Run], launcher: str) -> None:
    """A SLURM job runs the engine itself, so only train_net.py runs launch there."""
    other = next((run for run in runs if run.trainer != TRAIN_NET), None)
    if launcher != "local" and other is not None:
        raise ConfigError(f"sweep: {other.name} is trained by tools/{other.trainer.name}, which runs "
                          f"with --launcher local only (a SLURM job runs the engine)")


def shared_env(runs: list[Run]) -> dict[str, str]:
    """The ``env`` of a job array's runs, which must agree: one array has one environment."""
    merged: dict[str, str] = {}
    for run in runs:
        for key, value in run.env.items():
            if merged.setdefault(key, value) != value:
                raise ConfigError(f"sweep: env {key} is {merged[key]!r} for some runs and {value!r} for "
                                  f"{run.name}; one SLURM submission has one environment")
    return merged


def submit(runs: list[Run], args, folder: Path) -> list:
    """One job array (``slurm`` or ``slurm-local``) through the engine's submitit path
    (:func:`engine.slurm.submit`, the one ``train_net.py --slurm`` takes); returns the jobs."""
    from lil_meta.engine.slurm import submit as submit_jobs  # noqa: PLC0415  (submitit only for this launcher)

    return submit_jobs([run.argv() for run in runs], folder, local=args.launcher == "slurm-local",
                       gpus_per_node=args.gpus_per_node, tasks_per_node=1, cpus_per_task=args.cpus_per_task,
                       partition=args.partition, account=args.account, time_min=args.time,
                       mem_gb=args.mem_gb, array_parallelism=args.array_parallelism, name="lil-sweep")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="sweep_file | key=value",
                   help="YAML files with configs, seeds, overrides, columns (one grid); config overrides "
                        "for every run")
    p.add_argument("--configs", nargs="+", default=[], metavar="CONFIG", help="instead of sweep files")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="N")
    p.add_argument("--output-root", required=True, metavar="DIR")
    p.add_argument("--data-root", metavar="DIR", help="replaces {data_root} in the overrides")
    p.add_argument("--launcher", choices=["local", "slurm", "slurm-local"], default="local")
    p.add_argument("--jobs", type=int, default=1, help="local: trainings at a time")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status only")
    g = p.add_argument_group("slurm")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--time", type=int, default=24 * 60, metavar="MIN", help="per run")
    g.add_argument("--gpus-per-node", type=int, default=0)
    g.add_argument("--cpus-per-task", type=int, default=2)
    g.add_argument("--mem-gb", type=int)
    g.add_argument("--array-parallelism", type=int, default=32)
    args = p.parse_intermixed_args(argv)
    args.sweep_files = [item for item in args.items if "=" not in item]
    args.opts = [item for item in args.items if "=" in item]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if bool(args.sweep_files) == bool(args.configs):
            raise ConfigError("sweep: give either sweep files or --configs (not both)")
        if args.jobs < 1:
            raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
        if Path(args.output_root).exists() and not Path(args.output_root).is_dir():
            raise ConfigError(f"--output-root {args.output_root}: exists and is not a folder")
        runs = (expand_files(args.sweep_files, args.output_root, args.opts, args.data_root) if args.sweep_files
                else expand(args.configs, args.seeds, args.output_root, args.opts, data_root=args.data_root))
        check_launcher(runs, args.launcher)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs.sort(key=lambda run: run.seed)  # stable: seed by seed, the grid's order within a seed
    todo = [run for run in runs if run.status != "done"]
    print(f"{len(runs)} runs: {len(runs) - len(todo)} finished, "
          f"{sum(r.status == 'partial' for r in todo)} to resume, {sum(r.status == 'new' for r in todo)} new")
    if args.dry_run:
        for run in runs:
            print(f"  {run.status:8s} {run.name}  {' '.join(run.argv()[4:])}")
        return 0
    if not todo:
        return 0
    root = Path(args.output_root)
    if args.launcher == "local":
        failed = [run for run, code in run_local(todo, args.jobs, root / "sweep_logs") if code]
        print(f"{len(todo) - len(failed)} of {len(todo)} runs finished" + (
            "; failed: " + ", ".join(r.name for r in failed) if failed else ""))
        return 1 if failed else 0
    try:
        os.environ.update(shared_env(todo))  # sbatch and submitit's local executor pass it to the jobs
        jobs = submit(todo, args, root / "slurm")
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted {len(jobs)} jobs (array {jobs[0].job_id.split('_')[0]}); logs in {root / 'slurm'}")
    if args.launcher == "slurm-local":
        failed = 0
        for job, run in zip(jobs, todo, strict=True):
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001  (report every failed run, then fail)
                failed += 1
                print(f"FAIL {run.name}: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    exit_with(main)
