"""Checkpoints: atomic writes, keep-last-K rotation, config fingerprints.

A training checkpoint is a plain dict saved with ``torch.save`` that ``torch.load(...,
weights_only=True)`` can read back: tensors (all on CPU), numbers, strings, lists and dicts.
It holds everything an exact resume needs (see :meth:`engine.trainer.MetaTrainer.state_dict`)
plus ``fingerprint``/``config``: a sha256 of the resolved config without the keys that may
legitimately change between a run and its resumption (:data:`VOLATILE_KEYS`), so weights from
another experiment are refused with the differing keys named instead of silently loaded, and
``settings`` (:func:`run_settings`: the :data:`ROUNDING_KEYS`, the schedule's length and the
intra-op thread count).

The promise of a resume: with the same settings and thread count it continues bit for bit as
the uninterrupted run would have; with another value of a :data:`ROUNDING_KEYS` key or another
thread count (a requeue on another node) it continues equal to float rounding (about 1e-8 on
the weights after a few iterations), and the resume says so in a warning.

Files are written with :func:`engine.fileio.atomic_write` (a temporary file in the same
folder moved into place with ``os.replace``), so a crash mid-save never leaves a truncated
``model_*.pth`` or a ``last_checkpoint`` naming one.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lil_meta.engine.config import complete_config
from lil_meta.engine.errors import CheckpointError
from lil_meta.engine.fileio import atomic_write  # re-exported: callers import it from here too

logger = logging.getLogger(__name__)

__all__ = ["Checkpointer", "atomic_write", "config_fingerprint", "VOLATILE_KEYS", "ROUNDING_KEYS", "run_settings"]

#: Config keys left out of the fingerprint: they may change between a run and its resumption.
#: Most change nothing that is trained; :data:`ROUNDING_KEYS` change the summation order only.
VOLATILE_KEYS = ("output_dir", "device", "test", "log", "solver.max_iter",
                 "solver.checkpoint_period", "solver.keep_checkpoints",
                 "algorithm.inner_steps_test", "algorithm.execution", "algorithm.diagnostics",
                 "pretrain.algorithm.inner_steps_test", "pretrain.algorithm.execution",
                 "pretrain.algorithm.diagnostics",
                 "solver.on_nonfinite",
                 "solver.max_skips", "solver.task_chunk", "solver.fused", "launch")
_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


def _fingerprinted(cfg: DictConfig | Mapping) -> dict:
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(dict(cfg))
    for key in VOLATILE_KEYS:
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def config_fingerprint(cfg: DictConfig | Mapping) -> tuple[str, str]:
    """(sha256 hex, YAML text) of ``cfg`` without :data:`VOLATILE_KEYS`."""
    text = OmegaConf.to_yaml(OmegaConf.create(_fingerprinted(cfg)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), text


#: Keys that may change on ``--resume`` (they are in :data:`VOLATILE_KEYS`) but change the
#: floating-point summation order, so a run resumed with another value equals the uninterrupted
#: one to float rounding, not bit for bit; a resume that changes one is warned about
#: (:func:`engine.runner.train_and_test`), as is another intra-op thread count.
ROUNDING_KEYS = ("solver.task_chunk", "solver.fused", "algorithm.execution.engine",
                 "algorithm.execution.checkpoint_inner_steps", "algorithm.execution.channels_last",
                 "pretrain.algorithm.execution.engine", "pretrain.algorithm.execution.checkpoint_inner_steps",
                 "pretrain.algorithm.execution.channels_last")


def run_settings(cfg: DictConfig | Mapping) -> dict[str, Any]:
    """The settings a checkpoint records besides its fingerprint: the :data:`ROUNDING_KEYS`,
    ``solver.max_iter`` and the schedule's keys (compared on resume); ``num_threads`` is added
    when it is saved."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg))
    keys = (*ROUNDING_KEYS, "solver.max_iter", "solver.lr_schedule", "solver.warmup_iters", "solver.lr",
            "solver.min_lr")
    return {k: flat[k] for k in keys if k in flat and isinstance(flat[k], (int, float, str, bool))}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _config_diff(saved_yaml: str, current_yaml: str, limit: int = 4) -> str:
    saved = _flatten(OmegaConf.to_container(OmegaConf.create(saved_yaml)))
    current = _flatten(OmegaConf.to_container(OmegaConf.create(current_yaml)))
    keys = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    parts = [f"{k}: {saved.get(k, '<absent>')!r} in checkpoint, {current.get(k, '<absent>')!r} now"
             for k in keys[:limit]]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(parts) + more


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _names_existing_file(exc: CheckpointError, candidates: list[Path]) -> bool:
    """Whether ``exc`` is the failure of a candidate file that exists (the error worth showing
    when none loads: why the newest checkpoint there is could not be used)."""
    return any(str(exc).startswith(f"{p}:") and p.is_file() for p in candidates)


class Checkpointer:
    """Saves and loads checkpoints in ``output_dir``.

    Args:
        output_dir: folder of the run; created on the first save, never on construction (so
            that building a checkpointer writes nothing).
        keep: how many periodic checkpoints (``model_0000499.pth``: the weights after 500
            iterations) to keep; older ones are deleted. ``keep <= 0`` keeps all. Named
            checkpoints (``model_final.pth``, ``model_best.pth``) are never deleted.
        cfg: the run's config; its fingerprint is stored on save and checked on load.
    """

    def __init__(self, output_dir: str | os.PathLike, keep: int = 3, cfg: DictConfig | None = None,
                 writer: bool = True):
        self.output_dir = Path(output_dir)
        self.keep = int(keep)
        self.writer = bool(writer)  # False on every process but rank 0: saving is a no-op
        self.fingerprint, self.config_yaml = config_fingerprint(cfg) if cfg is not None else (None, None)
        self.settings = run_settings(cfg) if cfg is not None else None

    # ---- saving ---------------------------------------------------------------------------
    def save(self, name: str, *, tag_last: bool | None = None, **state: Any) -> Path:
        """Write ``state`` to ``output_dir/name.pth`` atomically and return the path.

        ``tag_last`` (default: whether ``name`` is a periodic ``model_NNNNNNN``) records the file
        in ``last_checkpoint``, the one ``--resume`` continues from; only full training states
        should be tagged. On a process that is not the ``writer`` nothing is written.
        """
        filename = name if name.endswith(".pth") else f"{name}.pth"
        if not self.writer:
            return self.output_dir / filename
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / filename
        payload = _to_cpu(dict(state))
        if self.fingerprint is not None:
            payload["fingerprint"], payload["config"] = self.fingerprint, self.config_yaml
        if self.settings is not None:
            payload["settings"] = {**self.settings, "num_threads": torch.get_num_threads()}
        buffer = io.BytesIO()  # serialised first: a write error is then an OSError, not torch's RuntimeError
        torch.save(payload, buffer)
        atomic_write(path, buffer.getbuffer())
        periodic = _PERIODIC.match(filename) is not None
        if periodic if tag_last is None else tag_last:
            atomic_write(self.output_dir / "last_checkpoint", lambda f: f.write(filename.encode()))
        if periodic:
            self._prune()
        logger.info("saved checkpoint %s", path)
        return path

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        periodic = self._periodic()
        try:
            last = self.get_checkpoint_file()
        except CheckpointError:
            last = None
        for old in periodic[: -self.keep]:
            if last is None or old.resolve() != last.resolve():
                old.unlink(missing_ok=True)

    # ---- loading --------------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        """Whether the folder holds anything to resume: a ``last_checkpoint`` entry (even a broken
        one) or a periodic checkpoint."""
        tag = self.output_dir / "last_checkpoint"
        return tag.exists() or tag.is_symlink() or bool(self._periodic())

    def _periodic(self) -> list[Path]:
        """The periodic checkpoints of the folder, oldest first."""
        if not self.output_dir.is_dir():
            return []
        return sorted(p for p in self.output_dir.iterdir() if _PERIODIC.match(p.name) and p.is_file())

    def get_checkpoint_file(self) -> Path | None:
        """The file ``last_checkpoint`` names, or ``None`` when there is no ``last_checkpoint``.

        A ``last_checkpoint`` that is a folder, unreadable, not UTF-8, empty or NUL-filled (a
        crash of the filesystem), or that names anything but a file of this folder, is a
        :class:`CheckpointError` whose message shows the bytes escaped, never raw.
        """
        tag = self.output_dir / "last_checkpoint"
        if not (tag.exists() or tag.is_symlink()):
            return None
        if not tag.is_file():
            raise CheckpointError(f"{tag}: not a file; it should name the newest checkpoint file")
        try:
            raw = tag.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{tag}: cannot read it ({exc.strerror or exc})") from None
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = None
        if name is None or not name.isprintable() or "/" in name or name in (".", ".."):
            shown = ascii(raw[:40])[1:] + ("…" if len(raw) > 40 else "")
            raise CheckpointError(f"{tag}: holds {shown}, not the name of a checkpoint file in this folder")
        if not name:
            raise CheckpointError(f"{tag}: empty; it should name the newest checkpoint file")
        return self.output_dir / name

    def load(self, path: str | os.PathLike, check_config: bool = True) -> dict[str, Any]:
        """Read a checkpoint (``weights_only``, onto the CPU) and check its config fingerprint."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"{path}: cannot read checkpoint, the file is truncated or corrupt "
                f"({type(exc).__name__}: {first})"
            ) from None
        if not isinstance(state, dict) or "model" not in state:
            raise CheckpointError(f"{path}: not a checkpoint of this framework (no 'model' entry)")
        if check_config and self.fingerprint is not None:
            saved = state.get("fingerprint")
            if saved is None:
                raise CheckpointError(f"{path}: checkpoint carries no config fingerprint")
            if saved != self.fingerprint and not self._same_once_completed(state.get("config"), path):
                diff = _config_diff(state.get("config") or "{}", self.config_yaml)
                raise CheckpointError(f"{path}: checkpoint was written by a run with another config ({diff})")
        logger.info("loaded checkpoint %s", path)
        return state

    def _same_once_completed(self, saved_yaml: str | None, path: Path) -> bool:
        """Whether a checkpoint's config, completed with the defaults of keys added since it was
        written (:func:`engine.config.complete_config`), is this run's: a run started by an
        earlier version resumes when nothing it trains with has changed."""
        try:
            same = config_fingerprint(complete_config(saved_yaml or "{}"))[0] == self.fingerprint
        except Exception:  # noqa: BLE001  (a config this version cannot read is simply another config)
            return False
        if same:
            logger.info("%s: its config lacks keys added since; with their defaults it is this run's", path)
        return same

    def _load_newest_readable(self, required: tuple[str, ...] = ("model",)) -> dict:
        """The checkpoint ``last_checkpoint`` names or, if that one cannot be loaded (truncated,
        corrupt, another config, lacking one of ``required``) or ``last_checkpoint`` itself is
        missing or broken, the newest periodic one (older than the named one) that can; the
        failures are then logged as warnings. When none loads, the first error alone is raised."""
        failures: list[CheckpointError] = []
        tag = self.output_dir / "last_checkpoint"
        if tag.is_dir():  # never replaced by a save: refused rather than resumed past
            raise CheckpointError(f"{tag}: a folder, not a file; remove it (it should name the newest "
                                  "checkpoint file) and resume again")
        try:
            last = self.get_checkpoint_file()
        except CheckpointError as exc:
            failures.append(exc)
            last = None
        periodic = self._periodic()
        if last is None and not failures:
            if not periodic:
                raise CheckpointError(f"{self.output_dir}: no checkpoint to resume")
            failures.append(CheckpointError(f"{self.output_dir / 'last_checkpoint'}: missing"))
        candidates = [] if last is None else [last]
        candidates += [p for p in reversed(periodic) if last is None or p.name < last.name]
        for path in candidates:
            try:
                state = self.load(path)
                missing = [k for k in required if k not in state]
                if missing:
                    raise CheckpointError(f"{path}: not a training state to resume (no {', '.join(missing)})")
            except CheckpointError as exc:
                failures.append(exc)
                continue
            for exc in failures:  # reported only when a fallback is taken; else one error line
                logger.warning("%s; using an older checkpoint", exc)
            if failures:
                logger.warning("resuming from %s instead of %s", path.name,
                               last.name if last is not None else "the one last_checkpoint should name")
            return state
        present = [exc for exc in failures if _names_existing_file(exc, candidates)]
        raise present[0] if present else failures[0]

    def resume_or_load(self, path: str | os.PathLike | None = None, *, resume: bool = True,
                       required: tuple[str, ...] = ("model",)) -> dict | None:
        """With ``resume``, load the file ``last_checkpoint`` names if the folder holds any
        checkpoint (falling back as :meth:`_load_newest_readable` says); else ``path``.

        Returns ``None`` when there is nothing to load (a fresh run, even with ``--resume``:
        a requeued job that never reached its first checkpoint simply starts over).
        """
        if resume and self.has_checkpoint():
            return self._load_newest_readable(required)
        if path is not None:
            return self.load(path)
        return None
