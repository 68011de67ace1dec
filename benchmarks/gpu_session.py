#!/usr/bin/env python
"""One prepared GPU run: every GPU check and benchmark, in sections, then a PASS/FAIL table.

    python benchmarks/gpu_session.py --out output/gpu_session            # on a CUDA machine
    python benchmarks/gpu_session.py --dry-run --out output/gpu_dry      # every section on the CPU, tiny

Each section runs in its own subprocess with its own timeout and appends JSON lines to
``<out>/results.jsonl``; a section that fails or times out is a FAIL row and the next one runs.
Last, the table of targets (docs/performance.md, "The GPU session") is printed and written to
``<out>/table.md``:

- S0 the card, torch / CUDA / cuDNN / Triton versions, every TF32, benchmark and determinism switch;
- S1 the numerics check (``benchmarks/numerics_check.py``): every path against fp64, tolerances
  derived from the measured amplification, at a random and at a trained point;
- S2 Conv4 84×84, 5-way 1- and 5-shot, meta-batch 4, 16, 32, interleaved in one process: vmap
  and loop engines, ``higher``, the naive loop at 32; MAML, MAML + LIL, FOMAML, ANIL
  (``benchmarks/gpu_bench.py``);
- S3 ResNet-12 at meta-batch 4 against ``higher``, and the largest meta-batch that fits;
- S4 a profile of two steps (GPU busy fraction, kernels, top kernels) and 20 steps under
  ``torch.cuda.set_sync_debug_mode("error")`` (``benchmarks/gpu_profile.py``);
- S5 fp32 against tf32 against bf16: speed here, meta-gradient error from S1;
- S6 the candidate speedups against the plain step: ``cudnn.benchmark``, channels-last, a CUDA
  graph of the step, and what sampling episodes on the host costs (``benchmarks/gpu_speedups.py``).

On the device the project's packages that its image lacks travel as wheels (``make gpu-wheels``;
docs/performance.md gives the command line). The whole run is sized to end within 8 minutes on
an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

# seconds per section: together under 8 minutes, so that one run and a rerun fit 15 device-minutes
TIMEOUTS = {"S0": 30, "S1": 100, "S2": 140, "S3": 70, "S4": 60, "S5": 40, "S6": 40}
DRY_TIMEOUTS = {"S0": 60, "S1": 240, "S2": 240, "S3": 120, "S4": 120, "S5": 120, "S6": 120}


def environment(emit, dry_run: bool) -> None:
    """S0: what the numbers were measured on."""
    from lil_meta.engine.precision import precision_switches

    record = {"section": "S0", "python": platform.python_version(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
              "threads": torch.get_num_threads(), "switches": precision_switches(),
              "sync_debug_mode": torch.cuda.get_sync_debug_mode() if torch.cuda.is_available() else None}
    try:
        import triton

        record["triton"] = triton.__version__
    except ImportError:
        record["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record.update(device=props.name, capability=f"{props.major}.{props.minor}",
                      memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                      bf16=torch.cuda.is_bf16_supported())
    else:
        record["device"] = "cpu"
    emit(record)


def numerics(emit, dry_run: bool) -> None:
    """S1: benchmarks/numerics_check.py, its records under section S1."""
    import numerics_check  # noqa: PLC0415  (a sibling in benchmarks/: the script's folder is on the path)

    device = torch.device("cpu" if dry_run else "cuda")
    for case in ("random", "trained"):
        numerics_check.run_case(case, device, dry_run, lambda r: emit({"section": "S1", **r}))


def _sections() -> dict:
    import gpu_bench  # noqa: PLC0415
    import gpu_profile  # noqa: PLC0415
    import gpu_speedups  # noqa: PLC0415

    return {"S0": environment, "S1": numerics, **gpu_bench.SECTIONS, **gpu_profile.SECTIONS,
            **gpu_speedups.SECTIONS}


def run_section(name: str, out: Path, dry_run: bool) -> int:
    """One section in this process, appending to ``out``."""
    with out.open("a") as sink:
        def emit(record: dict) -> None:
            line = json.dumps({"dry_run": dry_run, **record}, default=str)
            sink.write(line + "\n")
            sink.flush()
            print(line, flush=True)

        _sections()[name](emit, dry_run)
    return 0


def launch(name: str, folder: Path, dry_run: bool, timeout: int) -> dict:
    """A section in a subprocess of its own; its status, appended to ``folder``'s results."""
    cmd = [sys.executable, os.path.abspath(__file__), "--section", name, "--out", str(folder)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry_run:
        cmd.append("--dry-run")
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True, check=False)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        tail = proc.stderr.strip().splitlines()[-3:] if proc.returncode else []
    except subprocess.TimeoutExpired:
        status, tail = f"timed out after {timeout} s", []
    seconds = time.perf_counter() - start
    record = {"section": name, "status": status, "seconds": round(seconds, 1), "stderr_tail": tail}
    with (folder / "results.jsonl").open("a") as sink:
        sink.write(json.dumps({"dry_run": dry_run, "session": record}) + "\n")
    print(f"{name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("output/gpu_session"))
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny shapes")
    parser.add_argument("--only", nargs="+", choices=list(TIMEOUTS), help="these sections alone")
    parser.add_argument("--section", choices=list(TIMEOUTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        return run_section(args.section, args.out / "results.jsonl", args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    timeouts = DRY_TIMEOUTS if args.dry_run else TIMEOUTS
    statuses = [launch(name, args.out, args.dry_run, timeouts[name]) for name in (args.only or timeouts)]
    from gpu_table import table  # noqa: PLC0415

    text = table(results, statuses, args.dry_run)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0 if all(s["status"] == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
