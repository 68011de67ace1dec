"""Every YAML under configs/ loads and builds its algorithm; the paper-row configs are what
their names say, composed from configs/_base_/."""

from pathlib import Path

import pytest

from lil_meta.engine.config import load_config
from lil_meta.models import build_algorithm
from lil_meta.models.backbones.conv4 import Conv4
from lil_meta.models.backbones.resnet12 import ResNet12

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# configs/tables/ holds sweep files (tools/sweep.py), checked in tests/tools/test_sweep.py
FILES = sorted(f for f in CONFIGS.rglob("*.yaml") if f.parent.name != "tables")


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
        assert isinstance(algo.model, ResNet12) and algo.inner_lr == 0.3 and cfg.solver.lr == 6e-4
        assert algo.model.head.in_features == 512  # TADAM's widths 64-128-256-512
    else:
        assert isinstance(algo.model, Conv4) and algo.inner_lr == 0.5 and cfg.solver.lr == 1e-3


def test_every_shared_base_is_used():
    texts = "".join(f.read_text() for f in CONFIGS.glob("*.yaml"))
    for base in (CONFIGS / "_base_").glob("*.yaml"):
        assert f"_base_/{base.stem}\n" in texts, base.name
        assert base.read_text().startswith("# @package _global_\n"), base.name


# Table 3 (cross-domain): train dataset -> test dataset, as config-name stem and reader name
CROSS_DOMAIN = {"mini2tiered": ("mini_imagenet", "tiered_imagenet"), "mini2cub": ("mini_imagenet", "cub"),
                "mini2cars": ("mini_imagenet", "cars"), "cars2cub": ("cars", "cub"),
                "cars2mini": ("cars", "mini_imagenet")}


@pytest.mark.parametrize("pair", sorted(CROSS_DOMAIN))
@pytest.mark.parametrize("lil", ["", "_lil"])
@pytest.mark.parametrize("shot", [1, 5])
def test_cross_domain_rows(pair, lil, shot):
    from lil_meta.datasets import build_dataset
    from lil_meta.engine.errors import ConfigError

    cfg = load_config(CONFIGS / f"maml{lil}_{pair}_{shot}shot.yaml")
    train, test = CROSS_DOMAIN[pair]
    d = cfg.data
    assert (d.name, d.image_size, d.channels, d.shot, d.way, d.root) == ("cross_domain", 84, 3, shot, 5, None)
    assert dict(d.args) == {"train": {"name": train, "root": None}, "test": {"name": test, "root": None}}
    assert cfg.algorithm.name == "maml" and cfg.algorithm.inner_steps == 3 and cfg.solver.max_iter == 30000
    weights = {t.name: t.weight for t in cfg.losses if "weight" in t}
    assert weights == ({"phase": 0.1, "pseudo_amplitude": 0.1 if shot == 5 else 0.01} if lil else {})
    with pytest.raises(ConfigError, match=f"data.args.train.root: required for dataset '{train}'"):
        build_dataset(cfg.data)
