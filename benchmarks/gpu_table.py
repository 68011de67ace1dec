"""The PASS/FAIL table of a GPU session (``benchmarks/gpu_session.py``) from its ``results.jsonl``.

One row per section (did it run) and one per target of docs/performance.md ("The GPU
session"), with the measured value. A dry run checks that every section runs; its numbers are
the CPU's at tiny shapes, so the targets read "dry run" there.
"""

from __future__ import annotations

import json
from pathlib import Path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _row(records: list[dict], section: str, **match) -> dict | None:
    for r in records:
        if r.get("section") == section and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _speedups(records: list[dict]) -> list[tuple[str, float | None, str, bool | None]]:
    """(check, value, target, pass) for S2's targets at meta-batch 32."""
    rows = []
    for shot, target in ((1, 5.0), (5, 3.0)):
        maml, higher = _row(records, "S2", shot=shot, meta_batch=32, row="maml vmap"), \
            _row(records, "S2", shot=shot, meta_batch=32, row="higher")
        value = higher["s_per_iter"] / maml["s_per_iter"] if maml and higher and "s_per_iter" in maml \
            and "s_per_iter" in higher else None
        rows.append((f"S2 MAML vmap vs higher, {shot}-shot, meta-batch 32", value, f">= {target}x",
                     None if value is None else value >= target))
        lil = _row(records, "S2", shot=shot, meta_batch=32, row="maml_lil vmap")
        value = lil["s_per_iter"] / maml["s_per_iter"] if maml and lil and "s_per_iter" in lil \
            and "s_per_iter" in maml else None
        rows.append((f"S2 MAML + LIL / MAML time, {shot}-shot, meta-batch 32", value, "<= 1.15",
                     None if value is None else value <= 1.15))
        naive = _row(records, "S2", shot=shot, meta_batch=32, row="naive")
        ok = maml and naive and maml.get("peak_alloc_mb_per_task") and naive.get("peak_alloc_mb_per_task")
        value = maml["peak_alloc_mb_per_task"] / naive["peak_alloc_mb_per_task"] if ok else None
        rows.append((f"S2 peak memory per task / naive loop's, {shot}-shot, meta-batch 32", value, "<= 1",
                     None if value is None else value <= 1.0))
    return rows


def _numerics(records: list[dict]) -> list[tuple[str, float | None, str, bool | None]]:
    rows = []
    for case in ("random", "trained"):
        fp32 = [r for r in records if r.get("section") == "S1" and r.get("case") == case and r.get("precision") == "fp32"]
        amp = _row(records, "S1", case=case, check="amplification")
        tol = amp["fp32_tolerance"] if amp else None
        for engine in ("loop", "vmap"):
            mine = [r for r in fp32 if r["engine"] == engine]
            worst = max((max(r["rel_err"], r["repeat_spread"]) for r in mine), default=None)
            rows.append((f"S1 fp32 meta-gradient vs fp64 ({case} point, {engine}), error or repeat spread", worst,
                         f"<= {tol:.3g}" if tol else "derived", None if not mine else all(r["ok"] for r in mine)))
        for precision in ("tf32", "bf16"):
            errs = [r["rel_err"] for r in records if r.get("section") == "S1" and r.get("case") == case
                    and r.get("precision") == precision]
            if errs:
                rows.append((f"S1 {precision} meta-gradient vs fp64 ({case} point), worst", max(errs), "stated", None))
    return rows


def _profile(records: list[dict]) -> list[tuple[str, float | None, str, bool | None]]:
    rows = []
    for r in (x for x in records if x.get("section") == "S4"):
        if "gpu_busy" in r:
            target = r["meta_batch"] >= 32
            rows.append((f"S4 GPU busy, {r['shot']}-shot meta-batch {r['meta_batch']}", r["gpu_busy"],
                         ">= 0.85" if target else "stated", (r["gpu_busy"] >= 0.85) if target else None))
        if "sync_free_steps" in r:
            rows.append((f"S4 20 steps under sync-debug 'error', meta-batch {r['meta_batch']}",
                         None, "no host wait", r["sync_free_steps"]))
    return rows


def _candidates(records: list[dict]) -> list[tuple[str, float | None, str, bool | None]]:
    """S6: each candidate's step time over the plain step's (below 1: faster), or its error."""
    rows = []
    for r in (x for x in records if x.get("section") == "S6" and x.get("row") not in (None, "plain")):
        plain = _row(records, "S6", shot=r["shot"], meta_batch=r["meta_batch"], row="plain")
        ok = plain and "s_per_iter" in plain and "s_per_iter" in r
        label = f"S6 {r['row']} / plain step, {r['shot']}-shot meta-batch {r['meta_batch']}"
        rows.append((label, r["s_per_iter"] / plain["s_per_iter"] if ok else None,
                     "stated" if ok else r.get("error", "no time"), None))
    return rows


def table(results: Path, statuses: list[dict], dry_run: bool) -> str:
    records = _records(results)
    device = next((r.get("device") for r in records if r.get("section") == "S0"), "?")
    lines = [f"GPU session on {device}{' (dry run on the CPU: targets not judged)' if dry_run else ''}", "",
             "| check | value | target | verdict |", "| --- | ---: | --- | --- |"]
    for s in statuses:
        lines.append(f"| {s['section']} ran | {s['seconds']} s | ok | {'PASS' if s['status'] == 'ok' else 'FAIL: ' + s['status']} |")
    for check, value, target, ok in _numerics(records) + _speedups(records) + _profile(records) + _candidates(records):
        shown = "—" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))
        verdict = "dry run" if dry_run else ("stated" if ok is None else ("PASS" if ok else "FAIL"))
        lines.append(f"| {check} | {shown} | {target} | {verdict} |")
    return "\n".join(lines) + "\n"
