"""What a run checks before it continues or starts from a saved state.

* :func:`check_folder_config`: ``--resume`` into a folder with no checkpoint yet starts over only
  when the folder's ``config.yaml`` is this run's config (fingerprint as for a checkpoint); a
  folder of another config is refused like one with checkpoints, before anything is written.
* :func:`resume_notes`: the warnings of a resume that continues equal only to float rounding
  (another :data:`engine.checkpoint.ROUNDING_KEYS` value or intra-op thread count) or on another
  learning-rate curve (``solver.max_iter`` changed under a schedule that depends on it).
* :func:`init_from_weights`: ``--weights`` without ``--eval-only`` starts training from a
  checkpoint's ``model`` tensors (fine-tuning); which of them load is logged.
* :func:`check_weights_finite`: weights with a NaN or inf are a numerical fault, never tested.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lil_meta.engine.checkpoint import (
    ROUNDING_KEYS,
    Checkpointer,
    _config_diff,
    config_fingerprint,
    run_settings,
)
from lil_meta.engine.components import moved_key
from lil_meta.engine.config import complete_config
from lil_meta.engine.errors import CheckpointError, UserInputError
from lil_meta.engine.trainer import NumericalFault

__all__ = ["check_folder_config", "resume_notes", "init_from_weights", "check_weights_finite", "held_back_warnings"]


def check_folder_config(out: Path, checkpointer: Checkpointer) -> None:
    """Refuse ``--resume`` into ``out`` when its ``config.yaml`` (there is no checkpoint) is not
    this run's config; a folder without one is a fresh start."""
    saved = out / "config.yaml"
    if not saved.is_file() or checkpointer.fingerprint is None:
        return
    try:
        fingerprint, text = config_fingerprint(complete_config(saved.read_text()))
    except Exception as exc:  # noqa: BLE001  (garbled YAML, a schema this version cannot read, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserInputError(f"{saved}: cannot read the config of the run in {out} ({first}); --resume "
                             "continues a run with its own config: choose another --output-dir") from None
    if fingerprint != checkpointer.fingerprint:
        diff = _config_diff(text, checkpointer.config_yaml).replace("in checkpoint", "in config.yaml")
        raise UserInputError(f"{saved}: the run in {out} has another config ({diff}); --resume continues "
                             "a run with its own config: choose another --output-dir")


def _factor(settings: dict[str, Any], it: int) -> float | None:
    """The cosine schedule's lr factor at ``it`` (:func:`engine.defaults.build_lr_scheduler`)."""
    if str(settings.get("solver.lr_schedule", "")).lower() != "cosine":
        return None
    warmup, max_iter = int(settings.get("solver.warmup_iters", 0)), int(settings["solver.max_iter"])
    if it < warmup:
        return (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, max_iter - warmup))
    lr = float(settings.get("solver.lr", 0.0))
    floor = float(settings.get("solver.min_lr", 0.0)) / lr if lr > 0 else 0.0  # older checkpoints: none recorded
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resume_notes(state: dict[str, Any], cfg: DictConfig, start_iter: int) -> list[str]:
    """Warnings for a resume from ``state`` under ``cfg`` (none for a checkpoint that records no
    ``settings``: one of an earlier version)."""
    saved = state.get("settings")
    if not isinstance(saved, dict):
        return []
    saved = {_renamed(k): v for k, v in saved.items()}
    now = {**run_settings(cfg), "num_threads": torch.get_num_threads()}
    notes = []
    changed = [k for k in (*ROUNDING_KEYS, "num_threads") if k in saved and k in now and saved[k] != now[k]]
    if changed:
        what = ", ".join(f"{'intra-op threads' if k == 'num_threads' else k} {saved[k]!r} -> {now[k]!r}"
                         for k in changed)
        notes.append(f"resuming with other settings than the checkpoint's ({what}): the run continues equal "
                     "to an uninterrupted one up to float rounding, not bit for bit")
    if "solver.max_iter" in saved and saved["solver.max_iter"] != now.get("solver.max_iter"):
        before, after = _factor(saved, start_iter), _factor(now, start_iter)
        if before is not None and after is not None:
            notes.append(f"resuming with solver.max_iter {saved['solver.max_iter']} -> {now['solver.max_iter']} "
                         f"under the cosine schedule: the learning rate at iteration {start_iter} goes from "
                         f"{before:.3g} to {after:.3g} x solver.lr (the schedule is stretched to the new length)")
    return notes


def _renamed(key: str) -> str:
    """A settings key of an earlier version's checkpoint under its name now
    (``algorithm.engine`` → ``algorithm.execution.engine``)."""
    path, _, last = key.rpartition(".")
    return moved_key(path, last) or key


def check_weights_finite(model: dict[str, Any], path: Path | str) -> None:
    """:class:`NumericalFault` naming the first tensors of ``model`` that hold a NaN or inf."""
    bad = [k for k, v in model.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise NumericalFault(f"{path}: the weights hold NaN or inf values ({', '.join(bad[:3])}{more}); "
                             "not evaluated", {})


def init_from_weights(algorithm: torch.nn.Module, checkpointer: Checkpointer, path: Path) -> str:
    """Load into ``algorithm`` every tensor of ``path``'s ``model`` whose name and shape are the
    algorithm's (any config: fine-tuning); the others stay at their initial values. Returns the
    line to log. A tensor of the same name and another shape, none in common, or a NaN/inf, is
    an error."""
    state = checkpointer.load(path, check_config=False)
    source, own = state["model"], algorithm.state_dict()
    clash = [k for k, v in source.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if clash:
        k = clash[0]
        raise CheckpointError(f"--weights {path}: tensor '{k}' has shape {tuple(source[k].shape)}, this "
                              f"model's has {tuple(own[k].shape)} (model.backbone, data.way?)")
    loaded = {k: v for k, v in source.items() if k in own}
    if not loaded:
        raise CheckpointError(f"--weights {path}: none of its tensors is one of this model's")
    check_weights_finite(loaded, path)
    algorithm.load_state_dict(loaded, strict=False)
    kept = [k for k in own if k not in loaded]
    kept_text = f"; left at their initial values: {', '.join(kept[:4])}" + (
        f" (+{len(kept) - 4} more)" if len(kept) > 4 else "") if kept else ""
    ignored = len(source) - len(loaded)
    return (f"initialised from {path}: {len(loaded)} of the model's {len(own)} tensors loaded (optimizer, "
            f"schedule and RNG start fresh){kept_text}" + (f"; {ignored} tensors of the file not in this "
                                                             "model ignored" if ignored else ""))


@contextmanager
def held_back_warnings(notes: list[tuple[int, str]]):
    """Hold back the checkpoint loader's warnings (a fallback to an older checkpoint) until the
    run's log is set up, so that they reach ``log.txt`` too, once; on an error they are dropped:
    the error says it all."""
    source = logging.getLogger("lil_meta.engine.checkpoint")
    held: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = held.append
    propagate, source.propagate = source.propagate, False
    source.addHandler(handler)
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.propagate = propagate
    notes += [(r.levelno, r.getMessage()) for r in held]
