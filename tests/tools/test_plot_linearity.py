import json
import subprocess
import sys

from tests_helpers import ROOT


def write_run(folder, rows):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_writes_png_with_one_curve_per_run(tmp_path):
    write_run(tmp_path / "a", [{"iter": 20, "pc": 1.5, "ac": 0.8}, {"iter": 40, "pc": 1.2, "ac": 0.9}])
    write_run(tmp_path / "b", [{"iter": 20, "pc": 1.1}, {"iter": 40, "pc": 1.05, "ac": 0.95}])
    out = tmp_path / "fig" / "lin.png"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_linearity.py"), str(tmp_path / "a"),
                           str(tmp_path / "b"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_run_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_linearity.py"), str(tmp_path / "nope"),
                           "-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "metrics.jsonl: not found" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_folder_of_seeds_is_one_curve_with_hess_ratio(tmp_path):
    from lil_meta.tools import plot_linearity

    group = tmp_path / "maml_5shot"
    group.mkdir()
    for seed, h in ((0, 0.2), (1, 0.4)):
        write_run(group / f"seed{seed}", [{"iter": 20, "pc": 1.5, "ac": 0.8, "hess_ratio": h},
                                          {"iter": 40, "pc": 1.2, "ac": 0.9, "hess_ratio": h / 2}])
    curves = plot_linearity.curves(group)
    its, mean, std = curves["hess_ratio"]
    assert its == [20, 40] and abs(mean[0] - 0.3) < 1e-12 and abs(mean[1] - 0.15) < 1e-12
    assert abs(std[0] - 0.1414213562) < 1e-9
    assert plot_linearity.main([str(group), "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_window_table_averages_each_seed_then_spreads_over_seeds(tmp_path):
    from lil_meta.tools import plot_linearity

    group = tmp_path / "g"
    group.mkdir()
    write_run(group / "seed0", [{"iter": 20, "pc": 9.0, "hess_ratio": 9.0}, {"iter": 40, "pc": 1.0, "hess_ratio": 0.2},
                                {"iter": 60, "pc": 3.0, "hess_ratio": 0.4}])
    write_run(group / "seed1", [{"iter": 40, "pc": 2.0, "hess_ratio": 0.5}, {"iter": 60, "pc": 2.0, "hess_ratio": 0.5}])
    table = plot_linearity.window_table([group], ["G"], first_iter=40)
    # seed means from iteration 40: pc 2.0 and 2.0; hess_ratio 0.3 and 0.5 (std 0.141)
    assert "| G | 2 | 2.000 ± 0.000 | — | 0.400 ± 0.141 | — | — | — |" in table


def test_window_table_has_the_kernel_metrics_beside_pc_ac_and_hess_ratio(tmp_path):
    from lil_meta.tools import plot_linearity

    group = tmp_path / "kernel_maml_5shot"
    group.mkdir()
    for seed, (err, agree) in enumerate(((0.2, 0.9), (0.4, 1.0))):
        write_run(group / f"seed{seed}", [{"iter": 20, "pc": 1.5, "lin_err": 9.0, "lin_agree": 0.0, "lin_acc": 0.0},
                                          {"iter": 40, "pc": 1.2, "lin_err": err, "lin_agree": agree, "lin_acc": 0.6}])
    table = plot_linearity.window_table([group], ["K"], first_iter=40)
    assert table.splitlines()[0] == "| run | seeds | pc | ac | hess_ratio | lin_err | lin_agree | lin_acc |"
    assert "| K | 2 | 1.200 ± 0.000 | — | — | 0.300 ± 0.141 | 0.950 ± 0.071 | 0.600 ± 0.000 |" in table
    its, mean, _ = plot_linearity.curves(group)["lin_agree"]
    assert its == [20, 40] and abs(mean[1] - 0.95) < 1e-12


def test_default_labels_are_table_rows_from_the_saved_config(tmp_path):
    from omegaconf import OmegaConf

    from lil_meta.engine.config import load_config
    from lil_meta.tools import plot_linearity

    runs = []
    for folder, config in (("kernel_maml_5shot", "maml_5shot"), ("maml_shot_5shot", "maml_shot_5shot"),
                           ("maml_shot_one_step_5shot", "maml_shot_one_step_5shot")):
        write_run(tmp_path / folder, [{"iter": 20, "pc": 1.0}])  # a single run folder
        OmegaConf.save(load_config(ROOT / "configs" / f"{config}.yaml"), tmp_path / folder / "config.yaml")
        runs.append(tmp_path / folder)
    write_run(tmp_path / "old", [{"iter": 20, "pc": 1.0}])  # no config.yaml
    assert plot_linearity.default_labels([*runs, tmp_path / "old"]) == [
        "MAML (5)", "MAML + SHOT (5)", "MAML + SHOT (one-step) (5)", "old"]
    # two runs of one row keep their folder names
    assert plot_linearity.default_labels([runs[0], runs[0]]) == ["kernel_maml_5shot"] * 2
