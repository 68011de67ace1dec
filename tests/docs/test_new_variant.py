"""docs/new_variant.md: its example files are in the page verbatim, train through
tools/train_net.py as the page says (tiny settings by overrides), and its other snippets run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import Registry
from lil_meta.losses import OuterLoss
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import tiny_batch

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "new_variant.md"
EXAMPLE, CONFIG = ROOT / "docs" / "examples" / "my_variant.py", ROOT / "docs" / "examples" / "my_variant.yaml"
TINY = [  # the settings of tests/configs/tiny.yaml, as overrides
    "algorithm.inner_steps=2", "algorithm.inner_steps_test=2", "algorithm.execution.engine=loop", "model.backbone.hidden=8",
    "data.way=3", "data.shot=2", "data.query=3", "+data.args.train_classes=12", "+data.args.val_classes=6",
    "+data.args.test_classes=6", "+data.args.per_class=6", "solver.meta_batch=2", "solver.lr=0.003",
    "solver.max_iter=4", "solver.checkpoint_period=2", "test.tasks=10", "test.val_tasks=5", "test.batch=5",
    "test.eval_period=2", "log.period=1", "device=cpu", "seed=3",
]


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_includes_the_example_files_verbatim():
    assert EXAMPLE.read_text() in code_blocks("python")
    assert CONFIG.read_text() in code_blocks("yaml")
    assert len(EXAMPLE.read_text().splitlines()) <= 30


def test_the_example_config_trains_through_train_net(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "docs" / "examples"),
                                                                   os.environ.get("PYTHONPATH")]))}
    command = re.search(r"(PYTHONPATH=\S+) \.venv/bin/python (tools/train_net\.py --config-file \S+)", DOC.read_text())
    assert command and command.group(1) == "PYTHONPATH=docs/examples"
    assert command.group(2) == "tools/train_net.py --config-file docs/examples/my_variant.yaml"
    proc = subprocess.run([sys.executable, *command.group(2).split(), "--output-dir", str(out), *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert re.fullmatch(r"test accuracy: .* \(10 tasks, 3-way 2-shot\)", proc.stdout.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == 4
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["loss_prox"] > 0 for m in metrics)  # the variant's term was in the loss
    saved = (out / "config.yaml").read_text()
    assert "name: prox_maml" in saved and "my_variant" in saved
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    rates = {k: v for k, v in state.items() if k.startswith("inner_lrs.")}
    assert len(rates) == 14 and any(v.item() != 0.5 for v in rates.values())  # learned, one per tensor (4 conv, 8 BN, 2 head)


def test_the_other_snippets_of_the_page_run():
    """Each hook snippet, executed against fresh registries, builds a working algorithm."""
    algorithms, losses = Registry("algorithm"), Registry("loss")
    namespace = {"ALGORITHMS": algorithms, "LOSSES": losses, "GBML": GBML, "OuterLoss": OuterLoss, "torch": torch}
    own_files = (EXAMPLE.read_text(), (ROOT / "docs" / "examples" / "my_backbone.py").read_text())
    snippets = [c for c in code_blocks("python") if c not in own_files and "register(\"" in c]
    for snippet in snippets:
        if "ALGORITHMS.register(\"maml\"" not in snippet:
            exec(snippet, namespace)
    assert algorithms.names() == ["maml_clip", "maml_top"] and losses.names() == ["finer_target", "proximal"]
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=3)
    top = algorithms.build({"name": "maml_top"}, "algorithm", model)
    assert top.adapted_names() == ["features.3.0.weight", "features.3.1.weight", "features.3.1.bias",
                                   "head.weight", "head.bias"]
    clip = algorithms.build({"name": "maml_clip"}, "algorithm", model, inner_steps=1)
    proximal = losses.build({"name": "proximal", "weight": 0.01}, "losses[1]")
    finer = losses.build({"name": "finer_target", "weight": 0.1}, "losses[2]")
    for algo in (top, clip, GBML(model, losses=[CrossEntropy(), proximal, finer])):
        out = algo(tiny_batch())
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    assert out["loss_prox"] > 0 and out["finer_gap"] > 0 and out["finer_max"] ** 2 >= out["finer_gap"]
    torch.testing.assert_close(out["loss_finer"], 0.1 * out["finer_gap"])
    with pytest.raises(ConfigError, match=r"the finer term's retraced trajectory \(losses\) takes 6 steps"):
        GBML(model, inner_steps=3, losses=[CrossEntropy(), finer], rates={"per_step": True})
    # clipped: each tensor moves by at most inner_lr
    adapted, frozen = clip.split_parameters()
    g = {n: 100 * torch.ones_like(p) for n, p in adapted.items()}
    moved = clip.inner_update(adapted, g, 0)
    assert all((moved[n] - p).norm() <= 0.5 + 1e-6 for n, p in adapted.items())


@pytest.mark.parametrize("key", ["proxx", "inner_lrr"])
def test_the_example_variant_checks_its_config_keys(key, monkeypatch):
    from lil_meta.engine.registry import ALGORITHMS

    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    import my_variant  # noqa: F401  (registers prox_maml once per process)

    with pytest.raises(ConfigError, match=rf"algorithm.{key}: unknown argument .*accepted: .*prox.*inner_lr"):
        ALGORITHMS.build({"name": "prox_maml", key: 1}, "algorithm", Conv4(5, 1, 16, hidden=3))


BACKBONE, BACKBONE_CONFIG = ROOT / "docs" / "examples" / "my_backbone.py", ROOT / "docs" / "examples" / "my_backbone.yaml"


def test_the_backbone_example_is_in_the_page_and_trains_through_train_net(tmp_path):
    assert BACKBONE.read_text() in code_blocks("python") and BACKBONE_CONFIG.read_text() in code_blocks("yaml")
    assert "PYTHONPATH=docs/examples .venv/bin/python tools/train_net.py --config-file docs/examples/my_backbone.yaml" \
        in DOC.read_text()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "docs" / "examples")}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", str(BACKBONE_CONFIG), "--output-dir",
                           str(out), *TINY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    model = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert {"model.head.weight", "model.features.0.weight"} <= model.keys()


def test_a_backbone_that_breaks_the_contract_is_one_line_as_the_page_shows(tmp_path):
    """The page's example line, for the example with its head renamed to ``fc``."""
    broken = tmp_path / "broken_backbone.py"
    broken.write_text(BACKBONE.read_text().replace("self.head", "self.fc").replace('"conv2"', '"conv2_fc"'))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", str(BACKBONE_CONFIG), "--output-dir",
                           str(tmp_path / "run"), *TINY, "extra_modules=[broken_backbone]",
                           "model.backbone.name=conv2_fc"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    line = proc.stderr.strip().splitlines()[-1]
    expected = re.search(r"```\n(error: model\.backbone: the network \(Conv2\) .*)\n```", DOC.read_text()).group(1)
    assert line == expected, line
