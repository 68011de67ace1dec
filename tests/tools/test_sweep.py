"""The experiment chain at toy scale: tools/sweep.py (2 configs × 2 seeds on the built-in dataset)
→ tools/make_table.py → tools/plot_curves.py; plus the sweep files under configs/tables/."""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from pathlib import Path

import pytest
from PIL import Image

from lil_meta.engine.config import load_config
from lil_meta.tools import make_table, plot_curves, sweep
from lil_meta.tools.results import row_label
from tests_helpers import ROOT

TINY, TINY_LIL = ROOT / "tests" / "configs" / "tiny.yaml", ROOT / "tests" / "configs" / "tiny_lil.yaml"
FAST = ["solver.max_iter=4", "solver.checkpoint_period=2", "test.eval_period=2", "test.tasks=6"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    argv = ["--configs", str(TINY), str(TINY_LIL), "--seeds", "0", "1", "--output-root", str(root),
            "--jobs", "2", *FAST]
    assert sweep.main(argv) == 0
    return root, argv


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_every_run_lands_in_its_own_folder(swept):
    root, _ = swept
    for name in ("tiny", "tiny_lil"):
        for seed in (0, 1):
            run = root / name / f"seed{seed}"
            assert results(run)["iterations"] == 4
            assert load_config(run / "config.yaml").seed == seed
    assert len(list((root / "sweep_logs").glob("*.log"))) == 4


def test_a_second_sweep_skips_finished_runs(swept, capsys):
    root, argv = swept
    before = {p: p.stat().st_mtime_ns for p in root.rglob("results.json")}
    assert sweep.main(argv) == 0
    assert "4 runs: 4 finished, 0 to resume, 0 new" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("results.json")} == before


def test_the_table_is_mean_and_std_over_seeds(swept, tmp_path, capsys):
    root, _ = swept
    md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    assert make_table.main([str(root), "--markdown", str(md), "--csv", str(table_csv)]) == 0
    text = md.read_text()
    assert capsys.readouterr().out == text
    lines = text.splitlines()
    assert lines[0] == "| | glyphs |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| MAML (2)", "| MAML + LIL (2)"]
    accs = {name: [results(root / name / f"seed{s}")["test_acc"] for s in (0, 1)] for name in ("tiny", "tiny_lil")}
    expect = {name: f"{statistics.fmean(v):.2f} ± {statistics.stdev(v):.2f}" for name, v in accs.items()}
    best = max(accs, key=lambda n: round(statistics.fmean(accs[n]), 2))
    for line, name in zip(lines[2:], ("tiny", "tiny_lil"), strict=True):
        cell = line.split(" | ")[1].rstrip(" |")
        assert cell == (f"**{expect[name]}**" if name == best else expect[name]), line
    rows = list(csv.DictReader(table_csv.open()))
    assert [(r["row"], r["column"], r["n"], r["seeds"]) for r in rows] == [
        ("MAML (2)", "glyphs", "2", "0 1"), ("MAML + LIL (2)", "glyphs", "2", "0 1")]
    assert float(rows[1]["mean"]) == pytest.approx(statistics.fmean(accs["tiny_lil"]), abs=1e-4)


def test_the_run_time_table_sums_each_runs_wall_time(swept, capsys):
    root, _ = swept
    assert make_table.main([str(root), "--run-time"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = sum(results(root / n / f"seed{s}")["wall_time_s"] for n in ("tiny", "tiny_lil") for s in (0, 1))
    assert any(line.startswith("| all | | 4 | ") and f"{total / 60:.1f} (" in line for line in lines), lines

    from lil_meta.tools.results import Cell, Row  # noqa: PLC0415

    rows = [Row("MAML (5)", "MAML (5)", (5, 0)), Row("MAML + LIL (5)", "MAML (5)", (5, 1))]
    table = {("MAML (5)", "glyphs"): Cell([600.0, 720.0], [0, 1]), ("MAML + LIL (5)", "glyphs"): Cell([3000.0], [0])}
    assert make_table.run_time_markdown(rows, ["glyphs"], table).splitlines()[2:] == [
        "| MAML (5) | glyphs | 2 | 22.0 | 11.0 |", "| MAML + LIL (5) | glyphs | 1 | 50.0 | 50.0 |",
        "| all | | 3 | 72.0 (1 h 12 min) | |"]


def test_validation_curves_plot(swept, tmp_path):
    root, _ = swept
    png = tmp_path / "curves.png"
    assert plot_curves.main([str(root), "-o", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    data = plot_curves.curves(make_table.find_runs([root]))
    assert set(data["glyphs"]) == {"MAML (2)", "MAML + LIL (2)"}
    assert data["glyphs"]["MAML (2)"][0] == [2, 4]


def test_an_interrupted_run_is_resumed(tmp_path):
    (run,) = sweep.expand([str(TINY)], [5], tmp_path)
    assert run.status == "new" and "--resume" not in run.argv()
    run.out.mkdir(parents=True)
    (run.out / "config.yaml").write_text("seed: 5\n")
    assert run.status == "partial" and "--resume" in run.argv()


@pytest.mark.parametrize("text, pattern", [
    ("configs: [maml_5shot]\nseeds: [0]\nshots: 3\n", r"unknown key\(s\) \['shots'\]"),
    ("seeds: [0]\n", r"missing 'configs'"),
    ("configs: [no_such_config]\nseeds: [0]\n", r"configs: 'no_such_config' not found"),
    ("configs: [maml_5shot]\nseeds: [0]\ncolumns: {mini: ['data.root={data_root}/mini']}\n",
     r"pass --data-root"),
    ("configs: [maml_5shot]\nseeds: [0, 0]\n", r"seeds repeat"),
    ("configs: [maml_5shot\nseeds: [0]\n", r"sweep\.yaml: invalid YAML at line 2, column 6: "),
    ("configs: !!python/object/apply:os.system ['true']\n", r"sweep\.yaml: YAML tag '!!python/object/apply:os\.system'"),
    ("", r"sweep\.yaml: sweep file is empty"),
    ("- maml_5shot\n", r"sweep\.yaml: expected a mapping .* got a list"),
    ("configs: [caf\xe9]\n", r"sweep\.yaml: sweep file is not UTF-8 text \(byte 0xe9 at line 1, column 14\)"),
    ("configs: [maml_5shot]\nseeds: [0]\ntrainer: no_such_tool\n",
     r"sweep\.yaml: trainer: 'no_such_tool' is not a script of .*tools"),
    ("configs: [maml_5shot]\nseeds: [0]\ntrainer: ../tools/sweep\n", r"trainer: '\.\./tools/sweep' is not a script"),
    ("configs: [maml_5shot]\nseeds: [0]\nenv: [ONEDNN_MAX_CPU_ISA]\n", r"env: expected a mapping NAME -> string"),
    ("configs: [maml_5shot]\nseeds: [0]\nenv: {A: {b: 1}}\n", r"env: expected a mapping NAME -> string"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, text, pattern):
    spec = tmp_path / "sweep.yaml"
    spec.write_bytes(text.encode("latin-1"))
    assert sweep.main([str(spec), "--output-root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(pattern, err[0]), err[0]
    assert not (tmp_path / "out").exists()


def test_make_table_refuses_a_folder_without_runs(tmp_path, capsys):
    assert make_table.main([str(tmp_path)]) == 2
    assert "holds no run" in capsys.readouterr().err


TABLES = sorted((ROOT / "configs" / "tables").glob("*.yaml"))


@pytest.mark.parametrize("path", TABLES, ids=[p.name for p in TABLES])
def test_every_sweep_file_composes(path, tmp_path):
    spec = sweep.load_sweep(path)
    runs = sweep.expand(spec["configs"], spec["seeds"], tmp_path, spec["overrides"], spec["columns"],
                        data_root="/data")
    assert len(runs) == len(spec["configs"]) * len(spec["seeds"]) * max(1, len(spec["columns"]))
    for run in runs[:: len(spec["seeds"])]:
        cfg = load_config(run.config, [*run.overrides, f"seed={run.seed}"])
        label = row_label(cfg).label  # the row the run will land in is the one its name promises
        if run.config.stem.startswith(("random_init", "lil_init")):
            assert label.startswith("Random-init" if run.config.stem.startswith("random") else "LIL-init"), label
        elif "_lil" in run.config.stem:
            assert " + LIL" in label, label


def test_a_config_entry_can_carry_its_own_overrides(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("configs:\n  - maml_5shot\n  - random_init_5shot: [solver.max_iter=0]\nseeds: [0]\n"
                    "overrides: [solver.max_iter=50]\n")
    loaded = sweep.load_sweep(spec)
    runs = sweep.expand(loaded["configs"], loaded["seeds"], tmp_path, [*loaded["overrides"], "solver.max_iter=60"])
    assert runs[0].overrides == ["solver.max_iter=50", "solver.max_iter=60"]
    assert runs[1].overrides == ["solver.max_iter=50", "solver.max_iter=60", "solver.max_iter=0"]


def test_several_sweep_files_are_one_grid_and_another_trainer_gets_its_prefix(tmp_path, capsys):
    """The built-in study is several files run by one command; its reference rows come from
    tools/reference_maml.py, in folders of their own."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(f"configs: ['{TINY}']\nseeds: [0]\noverrides: [solver.max_iter=2, test.tasks=4]\n")
    ref = tmp_path / "ref.yaml"
    ref.write_text(f"trainer: reference_maml\nprefix: reference_\nconfigs: ['{TINY}']\nseeds: [0, 1]\n"
                   "overrides: [solver.max_iter=2, test.tasks=4, test.val_tasks=2, test.eval_period=1]\n")
    root = tmp_path / "out"
    argv = [str(tiny), str(ref), "--output-root", str(root), "--jobs", "2", "test.seed=7"]
    assert sweep.main(argv) == 0
    assert "3 runs: 0 finished, 0 to resume, 3 new" in capsys.readouterr().out
    assert results(root / "tiny" / "seed0")["iterations"] == 2
    for seed in (0, 1):
        ref_run = root / "reference_tiny" / f"seed{seed}"
        assert results(ref_run)["iterations"] == 2
        cfg = load_config(ref_run / "config.yaml")
        assert (cfg.algorithm.name, cfg.seed, cfg.test.seed) == ("reference_maml", seed, 7)
    assert make_table.main([str(root)]) == 0
    assert "MAML (reference)" in capsys.readouterr().out

    # the same file twice would put two runs in one folder; SLURM jobs run the engine only
    assert sweep.main([str(tiny), str(tiny), "--output-root", str(tmp_path / "x")]) == 2
    assert "share a folder" in capsys.readouterr().err
    assert sweep.main([str(ref), "--output-root", str(tmp_path / "y"), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "runs with --launcher local only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_listing_cut_short_by_its_reader_ends_quietly(tmp_path):
    """``sweep.py --dry-run | head``: 6,000 lines (over 200 KB, three times a pipe's buffer), the reader keeps one."""
    import subprocess  # noqa: PLC0415

    seeds = [str(s) for s in range(6000)]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "sweep.py"), "--configs", str(TINY), "--seeds",
                             *seeds, "--output-root", str(tmp_path), "--dry-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"6000 runs: 0 finished")
    proc.stdout.close()  # the reader goes away while the tool still writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_slurm_local_launcher_runs_each_run_as_the_engines_job(tmp_path):
    """The job array goes through engine/slurm.py, the path train_net.py --slurm takes."""
    argv = ["--configs", str(TINY), "--seeds", "0", "1", "--output-root", str(tmp_path),
            "--launcher", "slurm-local", "solver.max_iter=2", "test.tasks=6"]
    assert sweep.main(argv) == 0
    for seed in (0, 1):
        assert results(tmp_path / "tiny" / f"seed{seed}")["iterations"] == 2
    assert len(list((tmp_path / "slurm").rglob("*_log.out"))) == 2


def test_runs_start_seed_by_seed_and_carry_their_files_env(tmp_path, capsys):
    """A study stopped part-way holds whole paired seeds; a file's ``env`` reaches its runs only."""
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text("configs: [maml_5shot, maml_lil_5shot]\nseeds: [0, 1]\nenv: {LIL_SWEEP_PROBE: AVX2}\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text("configs: [maml_1shot]\nseeds: [0, 1]\n")
    assert sweep.main([str(pinned), str(plain), "--output-root", str(tmp_path / "out"), "--dry-run"]) == 0
    listed = [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == ["maml_5shot/seed0", "maml_lil_5shot/seed0", "maml_1shot/seed0",
                      "maml_5shot/seed1", "maml_lil_5shot/seed1", "maml_1shot/seed1"]

    probe = tmp_path / "probe.py"  # a trainer that records the variable where its run would write
    probe.write_text("import os, sys\nout = sys.argv[sys.argv.index('--output-dir') + 1]\nos.makedirs(out)\n"
                     "open(os.path.join(out, 'probe'), 'w').write(os.environ.get('LIL_SWEEP_PROBE', '-'))\n")
    runs = [run for path in (pinned, plain) for run in sweep.expand_files([str(path)], tmp_path / "run")]
    for run in runs:
        run.trainer = probe
    assert all(code == 0 for _, code in sweep.run_local(runs, 2, tmp_path / "logs"))
    assert {run.out.parent.name: (run.out / "probe").read_text() for run in runs} == {
        "maml_5shot": "AVX2", "maml_lil_5shot": "AVX2", "maml_1shot": "-"}
    other = sweep.expand_files([str(plain)], tmp_path / "o")
    other[0].env = {"LIL_SWEEP_PROBE": "AVX512"}
    with pytest.raises(sweep.ConfigError, match="one SLURM submission has one environment"):
        sweep.shared_env([*runs, other[0]])
