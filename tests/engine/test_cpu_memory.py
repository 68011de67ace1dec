"""engine/cpu_memory.py: after keep_freed_memory(), a large block freed and allocated again is
served from memory the process already holds (no fresh page faults); LIL_CPU_MALLOC=system
leaves malloc alone. Each case runs in its own interpreter: the setting is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests_helpers import ROOT

PROBE = """
import resource
import torch
from engine.cpu_memory import keep_freed_memory
note = keep_freed_memory()
torch.manual_seed(0)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.rand(64, 16, 128, 128)  # 64 MiB activations per layer: glibc would mmap each
faults = []
for _ in range(6):  # the same training-like step, again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.nn.functional.max_pool2d(conv(x).relu(), 2).square().sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(note)
print(*faults)
"""


def _probe(env_value):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LIL_CPU_MALLOC", None)
    if env_value:
        env["LIL_CPU_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    note, faults = out.strip().splitlines()
    return note, [int(f) for f in faults.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_later_steps_reuse_freed_memory_without_new_page_faults():
    note, system = _probe("system")
    assert "LIL_CPU_MALLOC=system" in note
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert min(system) > pages  # glibc's default: fresh pages for the big blocks, every step
    note, kept = _probe(None)
    assert "kept for reuse" in note
    assert kept[0] > pages  # the first step touches fresh pages ...
    assert sum(kept[3:]) < min(system) // 4  # ... later steps mostly reuse them
