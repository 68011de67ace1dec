"""benchmarks/check_compile.py: the documented finding (docs/performance.md) that torch.compile runs a
first-order MAML meta-gradient, with the eager result, and refuses second order. Should a
torch release change either, this test fails and the page needs updating. The refusal comes from
AOTAutograd, which every training backend runs first; the test compiles with ``aot_eager``, which
stops there, because inductor's C++ build of the same graphs takes minutes on 2 cores."""

from __future__ import annotations

import re

import check_compile
from tests_helpers import ROOT


def test_first_order_compiles_and_second_order_is_refused(capsys):
    argv = ["--config-file", str(ROOT / "configs" / "maml_1shot.yaml"), "--dtype", "float64", "--backend", "aot_eager",
            "data.image_size=16", "model.backbone.hidden=4"]
    assert check_compile.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(line for line in lines if line.startswith("first order"))
    second = next(line for line in lines if line.startswith("second order"))
    match = re.search(r"ran; max relative difference to eager ([0-9.e+-]+)", first)
    assert match and float(match.group(1)) < 1e-10, first
    assert "torch.compile failed" in second and "double backward" in second, second
