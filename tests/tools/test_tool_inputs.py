"""The tools on garbled inputs: one ``error:`` line and status 2, never a traceback."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from lil_meta.engine.config import load_config
from lil_meta.tools import make_table, plot_linearity, sweep
from tests_helpers import ROOT

TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def fake_run(folder, test_acc=50.0):
    """A finished run folder as train_net.py leaves it (its config and results only)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(load_config(TINY), resolve=True))
    (folder / "results.json").write_text(json.dumps({"test_acc": test_acc, "test_ci95": 1.0}))
    return folder


def one_error(capsys, code, expected):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_make_table_on_garbled_runs(tmp_path, capsys):
    fake_run(tmp_path / "ok")
    garbled = fake_run(tmp_path / "garbled")
    (garbled / "config.yaml").write_text("a: [\n")
    one_error(capsys, make_table.main([str(garbled)]), "garbled/config.yaml: not a readable run config")
    one_error(capsys, make_table.main([str(fake_run(tmp_path / "na", test_acc="n/a"))]),
              "na/results.json: 'test_acc' is 'n/a', not a number")
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "config.yaml").write_text("foo: 1\n")
    (unrelated / "results.json").write_text('{"test_acc": 1.0}')
    one_error(capsys, make_table.main([str(unrelated)]), "unrelated/config.yaml: not the config.yaml of a run")
    one_error(capsys, make_table.main([str(tmp_path / "ok"), "--markdown", str(tmp_path)]),
              f"--markdown {tmp_path}: cannot write it (is a folder")


def test_plot_linearity_on_garbled_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"iter": 1, "pc": 1.0}) + "\n" + json.dumps({"pc": 0.9}) + "\n")
    one_error(capsys, plot_linearity.main([str(run), "-o", str(tmp_path / "x.png")]),
              "metrics.jsonl:2: a 'pc' value without its 'iter'")
    (run / "metrics.jsonl").write_text(json.dumps({"iter": 1, "pc": 1.0}) + "\n")
    one_error(capsys, plot_linearity.main([str(run), "-o", str(tmp_path)]), f"-o {tmp_path}: is a folder")


@pytest.mark.parametrize("case", ["seeds", "output-root"])
def test_sweep_on_garbled_input(tmp_path, capsys, case):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"configs: [{TINY}]\nseeds: " + ("[a, b]" if case == "seeds" else "[0]") + "\n")
    root = tmp_path / "out"
    if case == "output-root":
        root.write_text("x")
    expected = "seeds: expected integers, got 'a'" if case == "seeds" else "--output-root"
    one_error(capsys, sweep.main([str(spec), "--output-root", str(root), "--dry-run"]), expected)
