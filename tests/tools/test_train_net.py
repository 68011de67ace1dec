"""End to end: tools/train_net.py as a user runs it, in subprocesses, on tests/configs/tiny.yaml.

Refusals of bad input run train_net's ``main`` in this process instead: they end before any
training, and a subprocess would spend its time starting Python and importing torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lil_meta.tools.train_net import main as train_net_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "train_net.py"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def train_net(*args: str, config: Path = TINY) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--config-file", str(config), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def in_process(capsys, *args: str, config: Path = TINY) -> subprocess.CompletedProcess:
    """train_net.py's ``main`` here: its exit status and output as a subprocess's would be."""
    capsys.readouterr()
    code = train_net_main(["--config-file", str(config), *map(str, args)])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def snapshot(folder: Path) -> dict[str, tuple[int, int]] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("full") / "run"
    return out, ok(train_net("--output-dir", out))


def test_full_run_writes_everything(full_run):
    out, proc = full_run
    for name in ("config.yaml", "metrics.jsonl", "log.txt", "last_checkpoint", "model_0000002.pth",
                 "model_0000005.pth", "model_best.pth", "model_final.pth", "results.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "last_checkpoint").read_text() == "model_0000005.pth"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "acc", "lr", "tasks_per_s"} <= metrics[0].keys()
    assert "val/acc" in metrics[2] and "val/acc" in metrics[5]
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"test_acc", "test_ci95", "test_tasks", "test_acc_init", "test_ci95_init", "test_lin_acc", "test_lin_agree", "test_lin_err",
                            "best_val_acc", "best_val_iter",
                            "best_test_acc", "best_test_ci95", "iterations", "wall_time_s", "host",
                            "precision", "precision_switches"}
    assert results["test_tasks"] == 10 and results["iterations"] == 6
    assert results["precision"] == "fp32" and results["precision_switches"]["cudnn_conv_fp32_precision"] == "ieee"
    assert "precision: fp32 (solver.precision)" in (out / "log.txt").read_text()
    assert results["host"]["threads"] >= 1 and results["host"]["torch"] == torch.__version__
    saved = OmegaConf.load(out / "config.yaml")  # every constructor argument, as built
    assert dict(saved.model.backbone) == {"name": "conv4", "hidden": 8, "num_classes": 3, "in_channels": 1,
                                          "image_size": 28, "per_step_bn": False,
                                          "bn_steps": saved.algorithm.inner_steps}
    assert saved.algorithm.diagnostics.metrics_period == 1 and saved.algorithm.first_order is False
    assert saved.solver.precision == "fp32" and saved.solver.fused == "auto"
    assert results["best_val_iter"] in (3, 6) and 0 <= results["test_acc"] <= 100
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy: \d+\.\d\d ± \d+\.\d\d % \(10 tasks, 3-way 2-shot\)", last), last
    assert f"{results['test_acc']:.2f}" in last


def test_eval_only_reproduces_the_test_accuracy(full_run):
    out, _ = full_run
    proc = ok(train_net("--output-dir", out, "--eval-only"))
    results = json.loads((out / "results.json").read_text())
    assert proc.stdout.strip().splitlines()[-1].startswith(f"test accuracy: {results['test_acc']:.2f} ")


def test_stop_and_resume_is_bit_identical(full_run, tmp_path):
    out_a, _ = full_run
    out_b = tmp_path / "b"
    ok(train_net("--output-dir", out_b, "solver.max_iter=3"))
    assert (out_b / "last_checkpoint").read_text() == "model_0000002.pth"
    ok(train_net("--output-dir", out_b, "--resume", "solver.max_iter=6"))
    a, b = weights(out_a / "model_final.pth"), weights(out_b / "model_final.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    results = json.loads((out_b / "results.json").read_text())
    assert results["iterations"] == 6
    assert results["test_acc"] == json.loads((out_a / "results.json").read_text())["test_acc"]
    iters = [json.loads(x)["iter"] for x in (out_b / "metrics.jsonl").read_text().splitlines()]
    assert iters == [1, 2, 3, 4, 5, 6]


def refused(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("overrides, pattern", [
    (["solver.lrr=0.1"], r"unknown config key 'solver\.lrr'; did you mean 'solver\.lr'"),
    (["--resume", "seed=4"], r"model_0000005\.pth: checkpoint was written by a run with another config"),
    (["--eval-only", "--weights", "absent.pth"], r"absent\.pth: checkpoint not found"),
    (["seed=4"], r"already holds a run with a different config; pass --resume"),
    ([], r"already holds a run; pass --resume or choose another --output-dir"),
])
def test_bad_input_leaves_existing_run_untouched(full_run, capsys, overrides, pattern):
    out, _ = full_run
    before = snapshot(out)
    refused(in_process(capsys, "--output-dir", out, *overrides), pattern)
    assert snapshot(out) == before


@pytest.mark.parametrize("overrides, pattern", [
    (["algorithm.name=mamll"], r"algorithm\.name: unknown algorithm 'mamll'; did you mean 'maml'"),
    (["model.backbone.name=conv5"], r"model\.backbone\.name: unknown backbone 'conv5'"),
    (["--eval-only"], r"model_final\.pth: checkpoint not found"),
    (["data.way=7"], r"glyphs/test: a 7-way task needs 7 classes"),
    (["data.shot=5"], r"glyphs/test: a 3-way task needs 3 classes with >= 8 images"),
    (["solver.max_iter=abc"], r"bad value for 'solver\.max_iter'"),
    (["model.backbone.hiden=16"], r"unknown config key 'model\.backbone\.hiden'; did you mean 'model\.backbone\.hidden'"),
    (["model.backbone.num_classes=7"], r"model\.backbone: the network's head has 7 outputs but the tasks are 3-way"),
    (["data.query=40"], r"glyphs/test: a 3-way task needs 3 classes with >= 42 images"),
    (["algorithm.inner_steps=-1"], r"algorithm\.inner_steps / inner_steps_test: must be >= 0"),
    (["solver.meta_batch=0"], r"solver\.meta_batch: must be >= 1, got 0"),
    (["solver.on_nonfinite=ignore"], r"solver\.on_nonfinite: expected stop or skip"),
    (["solver.precision=fp16"], r"solver\.precision: expected one of fp32, tf32, bf16; got 'fp16'"),
    (["solver.precision=tf32"], r"solver\.precision=tf32: TF32 is an NVIDIA GPU format .* this run is on cpu"),
])
def test_bad_input_writes_nothing(tmp_path, capsys, overrides, pattern):
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    before = snapshot(used)
    refused(in_process(capsys, "--output-dir", fresh, *overrides), pattern)
    refused(in_process(capsys, "--output-dir", used, *overrides), pattern)
    assert not fresh.exists()
    assert snapshot(used) == before


BAD_FILES = {  # name: (how to make it, what the one line says)
    "syntax": (lambda p: p.write_text("seed: 1\nsolver:\n  lr: [0.1, 0.2\n"),
               r"bad\.yaml: invalid YAML at line 4, column 1: expected ',' or '\]'.*flow sequence at line 3, column 7"),
    "tag": (lambda p: p.write_text(f'seed: !!python/object/apply:os.system ["touch {p.parent}/PWNED"]\n'),
            r"bad\.yaml: YAML tag '!!python/object/apply:os\.system' at line 1, column 7 is not allowed"),
    "empty": (lambda p: p.write_text(""), r"bad\.yaml: config file is empty"),
    "comments only": (lambda p: p.write_text("# nothing here\n"), r"bad\.yaml: config file is empty"),
    "list": (lambda p: p.write_text("- seed\n- 1\n"), r"bad\.yaml: expected a mapping .* got a list"),
    "scalar": (lambda p: p.write_text("42\n"), r"bad\.yaml: expected a mapping .* got the value 42"),
    "folder": (lambda p: p.mkdir(), r"bad\.yaml: is a folder, not a config file"),
    "missing": (lambda p: None, r"bad\.yaml: config file not found"),
    "unreadable": (lambda p: (p.write_text("seed: 1\n"), p.chmod(0)),
                   r"bad\.yaml: cannot read config file \(Permission denied\)"),
    "alias loop": (lambda p: p.write_text("seed: 1\nx: &a [*a]\n"),
                   r"bad\.yaml: config file has a YAML alias that contains itself"),
    "not utf-8": (lambda p: p.write_bytes(b"seed: 1\nname: caf\xe9\n"),
                  r"bad\.yaml: config file is not UTF-8 text \(byte 0xe9 at line 2, column 10\)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_config_file_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    make, pattern = BAD_FILES[case]
    bad, out = tmp_path / "bad.yaml", tmp_path / "out"
    make(bad)
    if case == "unreadable" and os.access(bad, os.R_OK):
        pytest.skip("this user reads files whatever their mode (root)")
    proc = in_process(capsys, "--output-dir", out, config=bad)
    refused(proc, pattern)
    assert not out.exists() and not (tmp_path / "PWNED").exists()


def test_corrupt_checkpoint_is_one_line_error(full_run, capsys, tmp_path):
    out, _ = full_run
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    before = snapshot(out)
    refused(in_process(capsys, "--output-dir", out, "--eval-only", "--weights", junk), r"junk\.pth: ")
    assert snapshot(out) == before


PRETRAIN = ["algorithm.name=fomaml", "pretrain.iters=3", "pretrain.algorithm.momentum=0.5"]


@pytest.fixture(scope="module")
def whole_pretrain_run(tmp_path_factory) -> Path:
    whole = tmp_path_factory.mktemp("pretrain") / "whole"
    ok(train_net("--output-dir", whole, *PRETRAIN))
    return whole


@pytest.mark.parametrize("stop", [3, 4])
def test_resume_across_the_pretraining_boundary_is_bit_identical(whole_pretrain_run, tmp_path, stop):
    """LIL pretraining for 3 iterations, then FOMAML: stopped at the boundary (3) or just after
    it (4) and resumed, the run ends with the weights, teacher and counters of an unbroken one."""
    whole, broken = whole_pretrain_run, tmp_path / "broken"
    ok(train_net("--output-dir", broken, *PRETRAIN, f"solver.max_iter={stop}"))
    ok(train_net("--output-dir", broken, "--resume", *PRETRAIN))
    a, b = weights(whole / "model_final.pth"), weights(broken / "model_final.pth")
    assert any(k.startswith("pretrain.losses.0.teacher.") for k in a)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    phases = [json.loads(x)["phase"] for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert phases == [0, 0, 0, 1, 1, 1]
    assert "loss_lil_pretrain" in json.loads((whole / "metrics.jsonl").read_text().splitlines()[0])


def test_slurm_local_runs_the_job_through_submitit(tmp_path):
    out = tmp_path / "local"
    proc = ok(train_net("--slurm-local", "--time", "5", "--output-dir", out, "solver.max_iter=2"))
    assert re.search(r"submitted job \d+ \(local\)", proc.stdout), proc.stdout
    assert json.loads((out / "results.json").read_text())["iterations"] == 2
    assert list((out / "slurm").rglob("*_log.out"))


def test_the_job_command_line_drops_only_the_slurm_flags():
    from lil_meta.engine.slurm import job_argv

    argv = ["--config-file", "c.yaml", "--slurm", "--nodes", "2", "--time=30", "--partition", "gpu",
            "--output-dir", "out", "solver.lr=0.1", "--resume"]
    assert job_argv(argv) == ["--config-file", "c.yaml", "--output-dir", "out", "solver.lr=0.1", "--resume"]


@pytest.mark.parametrize("fused", [False, True])  # the check read before the update, and one step late
def test_a_diverging_run_stops_with_one_line_and_the_last_good_state(tmp_path, fused):
    out = tmp_path / "nan"
    diverge = ["algorithm.inner_lr=1e20", "algorithm.inner_steps=3", f"solver.fused={str(fused).lower()}"]
    proc = train_net("--output-dir", out, *diverge)
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]) and "Traceback" not in proc.stderr
    assert re.match(
        r"error: iteration 0: non-finite loss \(loss_ce=nan, loss=nan\): the inner loop diverged "
        r"\(non-finite trajectory\) in task\(s\) 0, 1; .*The state before it is in .*model_last_good\.pth$", errors[0])
    assert (out / "last_checkpoint").read_text() == "model_last_good.pth"
    # the skip policy is not part of the config fingerprint: the stopped run resumes with it
    proc = ok(train_net("--output-dir", out, "--resume", *diverge, "solver.on_nonfinite=skip", "solver.max_skips=6"))
    assert json.loads((out / "results.json").read_text())["iterations"] == 6
    assert "batch skipped (6 of at most 6" in (out / "log.txt").read_text()


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    refused(train_net("--output-dir", blocker / "run"), r"output_dir: cannot write to .*a_file/run \(Not a directory\)")
    assert blocker.read_text() == "not a folder"


def test_a_bf16_run_trains_and_says_so(tmp_path):
    """``solver.precision=bf16`` on the CPU: the forward under autocast, the rest fp32."""
    out = tmp_path / "bf16"
    ok(train_net("--output-dir", out, "solver.precision=bf16", "solver.max_iter=2"))
    results = json.loads((out / "results.json").read_text())
    assert results["precision"] == "bf16" and 0 <= results["test_acc"] <= 100
    assert weights(out / "model_final.pth")["model.head.weight"].dtype == torch.float32


def test_mamlpp_resumes_bit_identically_across_its_switch_to_second_order(tmp_path):
    """MAML++'s schedules (first order before iteration 3, the multi-step loss's weights) follow
    the step index alone: a run stopped at the switch and resumed ends with the weights of an
    unbroken one. (Its cosine lr follows solver.max_iter, which a stop by max_iter changes.)"""
    mamlpp = ["algorithm.name=mamlpp", "+algorithm.first_order_until=3",
              "losses=[{name: multi_step_ce, anneal_iters: 4}]"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    ok(train_net("--output-dir", whole, *mamlpp))
    ok(train_net("--output-dir", broken, *mamlpp, "solver.max_iter=3"))
    ok(train_net("--output-dir", broken, "--resume", *mamlpp))
    a, b = weights(whole / "model_final.pth"), weights(broken / "model_final.pth")
    assert any(k.startswith("inner_lrs.") for k in a) and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert "iteration 3: second-order inner gradients from here on" in (whole / "log.txt").read_text()
