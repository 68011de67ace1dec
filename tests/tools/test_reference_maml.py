"""tools/reference_maml.py: a run folder that make_table reads as its own row."""

import json

from lil_meta.tools import make_table, reference_maml
from tests_helpers import ROOT


def test_reference_run_writes_results_and_gets_its_own_row(tmp_path, capsys):
    out = tmp_path / "reference_maml_5shot" / "seed0"
    argv = ["--config-file", str(ROOT / "configs/maml_5shot.yaml"), "--output-dir", str(out), "seed=0",
            "model.backbone.hidden=4", "solver.max_iter=2", "solver.meta_batch=2", "test.eval_period=1",
            "test.val_tasks=3", "test.tasks=4", f"data.root={tmp_path / 'cache'}",
            "++data.args.num_classes=[10,5,5]"]
    assert reference_maml.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["test_acc"] <= 100.0 and results["iterations"] == 2
    assert [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert reference_maml.main(argv) == 0 and "finished already" in capsys.readouterr().out
    assert make_table.main([str(tmp_path)]) == 0
    assert "| MAML (reference) (5) |" in capsys.readouterr().out


def test_a_first_order_config_trains_the_reference_fomaml(tmp_path, capsys, monkeypatch):
    """The fomaml configs set algorithm.first_order: the reference then adapts without
    create_graph, and its row is FOMAML (reference), paired with the framework's FOMAML."""
    seen = []
    adapt = reference_maml.adapt
    monkeypatch.setattr(reference_maml, "adapt", lambda *a, create_graph: seen.append(create_graph) or adapt(
        *a, create_graph=create_graph))
    out = tmp_path / "reference_fomaml_5shot" / "seed0"
    argv = ["--config-file", str(ROOT / "configs/fomaml_5shot.yaml"), "--output-dir", str(out), "seed=0",
            "model.backbone.hidden=4", "solver.max_iter=2", "solver.meta_batch=2", "test.eval_period=2",
            "test.val_tasks=2", "test.tasks=3", f"data.root={tmp_path / 'cache'}", "++data.args.num_classes=[10,5,5]"]
    assert reference_maml.main(argv) == 0
    assert seen[:4] == [False] * 4  # the 2 x 2 training tasks
    assert json.loads((out / "results.json").read_text())["wall_time_s"] > 0
    assert make_table.main([str(tmp_path)]) == 0
    assert "| FOMAML (reference) (5) |" in capsys.readouterr().out


def test_paired_differences_use_common_seeds_and_a_t_interval():
    from lil_meta.tools.results import Cell, Row

    rows = [Row("MAML (5)", "MAML (5)", (5, 0)), Row("MAML + LIL (5)", "MAML (5)", (5, 1)),
            Row("MAML (reference) (5)", "MAML (reference) (5)", (5, 2))]
    table = {("MAML (5)", "glyphs"): Cell([70.0, 71.0, 72.0, 60.0], [0, 1, 2, 3]),
             ("MAML + LIL (5)", "glyphs"): Cell([71.0, 73.0, 75.0], [0, 1, 2]),
             ("MAML (reference) (5)", "glyphs"): Cell([70.5, 70.5], [0, 9])}
    pairs = make_table.paired_rows(rows, ["glyphs"], table)
    # seed 3 has no LIL run; the reference shares one seed only, too few for an interval
    assert pairs == [("MAML + LIL (5)", "MAML (5)", "glyphs", [1.0, 2.0, 3.0])]
    # mean 2, std 1, t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3) = 2.4842
    assert "| +2.00 ± 1.00 | [-0.48, +4.48] (covers 0) |" in make_table.paired_markdown(pairs)


def test_lil_init_is_paired_with_random_init():
    from lil_meta.tools.results import Cell, Row

    rows = [Row("Random-init (5)", "init (5)", (5, 0)), Row("LIL-init (5)", "init (5)", (5, 1))]
    table = {("Random-init (5)", "glyphs"): Cell([30.0, 31.0], [0, 1]),
             ("LIL-init (5)", "glyphs"): Cell([40.0, 45.0], [0, 1])}
    assert make_table.paired_rows(rows, ["glyphs"], table) == [
        ("LIL-init (5)", "Random-init (5)", "glyphs", [10.0, 14.0])]
