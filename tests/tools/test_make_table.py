"""tools/make_table.py on tiny fake run folders: SHOT rows paired by seed with MAML and with
MAML + LIL, ``--pair``, the kernel-predictor table (``--kernel``) and the run-time table."""

import json
import math
import statistics

import pytest
from omegaconf import OmegaConf
from scipy import stats

from lil_meta.engine.config import load_config
from lil_meta.tools import make_table
from tests_helpers import ROOT

_CONFIGS = {}


def write_run(root, config, seed, results, folder=None):
    """``root/FOLDER/seedS`` with the repository config ``config`` (seed set) and ``results``."""
    if config not in _CONFIGS:
        _CONFIGS[config] = load_config(ROOT / "configs" / f"{config}.yaml")
    run = root / (folder or config) / f"seed{seed}"
    run.mkdir(parents=True)
    OmegaConf.save(OmegaConf.merge(_CONFIGS[config], {"seed": seed}), run / "config.yaml")
    (run / "results.json").write_text(json.dumps(results))
    return run


MAML = [70.0, 72.0, 71.0]
LIL = [71.0, 74.0, 74.0]
SHOT = [72.0, 73.0, 75.0]


@pytest.fixture
def study(tmp_path):
    for config, accs in (("maml_5shot", MAML), ("maml_lil_5shot", LIL), ("maml_shot_5shot", SHOT)):
        for seed, acc in enumerate(accs):
            write_run(tmp_path, config, seed, {"test_acc": acc, "wall_time_s": 60.0})
    return tmp_path


def ci_line(method, baseline, diffs):
    n, mean, std = len(diffs), statistics.fmean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return f"| {method} − {baseline} | glyphs | {n} | {mean:+.2f} ± {std:.2f} | [{mean - half:+.2f}, {mean + half:+.2f}]"


def test_paired_puts_shot_against_maml_and_against_lil(study, capsys):
    assert make_table.main([str(study), "--paired"]) == 0
    out = capsys.readouterr().out
    assert "| MAML + SHOT (5) | **73.33 ± 1.53** |" in out  # the best of the MAML family
    assert ci_line("MAML + SHOT (5)", "MAML (5)", [2.0, 1.0, 4.0]) in out
    assert ci_line("MAML + SHOT (5)", "MAML + LIL (5)", [1.0, -1.0, 1.0]) in out
    assert ci_line("MAML + LIL (5)", "MAML (5)", [1.0, 2.0, 3.0]) in out
    # SHOT − LIL: mean 0.33, std 1.15, t(0.975, 2) · 1.15 / √3 = 2.87: the CI covers 0
    assert "| +0.33 ± 1.15 | [-2.54, +3.20] (covers 0) |" in out


def test_pair_option_pairs_any_two_rows_at_every_shot(study, capsys):
    for seed, acc in enumerate([70.0, 70.5, 73.0]):
        write_run(study, "maml_shot_one_step_5shot", seed, {"test_acc": acc})
    assert make_table.main([str(study), "--pair", "MAML + SHOT (one-step)", "MAML + SHOT"]) == 0
    out = capsys.readouterr().out
    assert ci_line("MAML + SHOT (one-step) (5)", "MAML + SHOT (5)", [-2.0, -2.5, -2.0]) in out
    assert ci_line("MAML + SHOT (one-step) (5)", "MAML + LIL (5)", [-1.0, -3.5, -1.0]) in out  # --pair implies --paired
    assert make_table.main([str(study), "--pair", "MAML + SHOT", "MAML + LIL (1)"]) == 2
    assert capsys.readouterr().err.startswith("error: --pair: no row 'MAML + LIL (1)' (rows: MAML (5), ")


def test_kernel_table_says_dash_and_n_where_runs_do_not_report(study, capsys):
    lin = {"test_lin_acc": 60.0, "test_lin_agree": 80.0, "test_lin_err": 0.5}
    for seed, agree in enumerate([80.0, 90.0, 85.0]):
        (study / "maml_5shot" / f"seed{seed}" / "results.json").write_text(
            json.dumps({"test_acc": MAML[seed], **lin, "test_lin_agree": agree}))
    for seed in (0, 1):  # SHOT's seed 2 is from before the metrics
        (study / "maml_shot_5shot" / f"seed{seed}" / "results.json").write_text(
            json.dumps({"test_acc": SHOT[seed], **lin, "test_lin_err": 0.25 + seed / 10}))
    assert make_table.main([str(study), "--kernel"]) == 0
    out = capsys.readouterr().out
    assert "| MAML (5) | glyphs | 3 | 71.00 ± 1.00 | 60.00 ± 0.00 | 85.00 ± 5.00 | 0.500 ± 0.000 |" in out
    assert "| MAML + LIL (5) | glyphs | 3 | 73.00 ± 1.73 | — | — | — |" in out
    assert ("| MAML + SHOT (5) | glyphs | 3 | 73.33 ± 1.53 | 60.00 ± 0.00 (n=2) | 80.00 ± 0.00 (n=2) | "
            "0.300 ± 0.071 (n=2) |") in out


def test_two_runs_of_one_seed_are_an_error(study, capsys):
    write_run(study, "maml_5shot", 1, {"test_acc": MAML[1]}, folder="maml_5shot_again")
    assert make_table.main([str(study)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "maml_5shot_again/seed1: a second run of 'MAML (5)'" in err
    assert err.count("\n") == 1


def test_run_time_sums_every_cell(study, capsys):
    assert make_table.main([str(study), "--run-time"]) == 0
    out = capsys.readouterr().out
    assert "| MAML (5) | glyphs | 3 | 3.0 | 1.0 |" in out
    assert "| all | | 9 | 9.0 (0 h 09 min) | |" in out
