"""Every YAML under configs/ loads and builds its algorithm; the paper-row configs are what
their names say, composed from configs/_base_/."""

from pathlib import Path

import pytest

from engine.config import load_config
from models import build_algorithm
from models.backbones.conv4 import Conv4
from models.backbones.resnet12 import ResNet12

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))


def test_every_paper_row_has_a_config():
    names = {f.stem for f in CONFIGS.glob("*.yaml")}
    for algo in ("anil", "boil"):
        for lil in ("", "_lil"):
            for net in ("", "_resnet12"):
                for shot in (1, 5):
                    assert f"{algo}{lil}{net}_{shot}shot" in names


@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(CONFIGS)) for f in FILES])
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    algo = build_algorithm(cfg)
    name = path.stem
    if path.parent != CONFIGS or not name.startswith(("anil", "boil")):
        return
    assert cfg.algorithm.name == name.split("_")[0]
    assert algo.adapt == ("head" if name.startswith("anil") else "body")
    assert cfg.data.shot == (1 if name.endswith("1shot") else 5) and cfg.data.way == 5
    losses = [(t.key, t.weight) for t in algo.losses]
    assert losses == ([("ce", 1.0), ("phase", 0.1)] if "_lil" in name else [("ce", 1.0)])
    if "resnet12" in name:
        assert isinstance(algo.model, ResNet12) and algo.inner_lr == 0.3
    else:
        assert isinstance(algo.model, Conv4) and algo.inner_lr == 0.5


def test_every_shared_base_is_used():
    texts = "".join(f.read_text() for f in CONFIGS.glob("*.yaml"))
    for base in (CONFIGS / "_base_").glob("*.yaml"):
        assert f"_base_/{base.stem}\n" in texts, base.name
        assert base.read_text().startswith("# @package _global_\n"), base.name
