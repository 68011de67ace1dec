"""The class splits shipped under datasets/splits/: sizes, disjointness, full coverage of the
dataset's classes, and agreement with the index rules they were derived from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lil_meta.datasets.cars import DEFAULT_SPLIT as CARS_SPLIT
from lil_meta.datasets.cifar_fs import DEFAULT_SPLIT as CIFAR_FS_SPLIT
from lil_meta.datasets.cub import DEFAULT_SPLIT as CUB_SPLIT
from lil_meta.datasets.sampler import SPLITS

SPLIT_DIR = Path(CUB_SPLIT).parent


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def by_index_rule(ordered: list[str]) -> dict[str, list[str]]:
    """Chen et al. (2019): i % 2 == 0 train, i % 4 == 1 val, i % 4 == 3 test."""
    return {"train": ordered[0::2], "val": ordered[1::4], "test": ordered[3::4]}


@pytest.mark.parametrize("path", sorted(SPLIT_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_split_is_cited_and_disjoint(path):
    spec = load(path)
    assert isinstance(spec.get("_source"), str) and len(spec["_source"]) > 50
    names = [n for s in SPLITS for n in spec[s]]
    assert all(isinstance(n, str) and n == n.strip() and n for n in names)
    assert len(set(names)) == len(names)  # disjoint splits, no class listed twice
    assert {k for k in spec if not k.startswith("_")} == set(SPLITS)


def test_readers_default_to_the_shipped_files():
    assert {CUB_SPLIT.name, CARS_SPLIT.name, CIFAR_FS_SPLIT.name} <= {
        p.name for p in SPLIT_DIR.glob("*.json")}


def test_cub_split_is_chen_et_al_100_50_50():
    spec = load(CUB_SPLIT)
    assert [len(spec[s]) for s in SPLITS] == [100, 50, 50]
    ordered = sorted(n for s in SPLITS for n in spec[s])
    # the 200 class folders of CUB_200_2011/classes.txt, "001.<Species>" .. "200.<Species>"
    assert len(ordered) == 200
    assert [int(n[:3]) for n in ordered] == list(range(1, 201))
    assert all(re.fullmatch(r"\d{3}\.[A-Za-z_]+", n) for n in ordered)
    assert ordered[0] == "001.Black_footed_Albatross" and ordered[-1] == "200.Common_Yellowthroat"
    assert {s: spec[s] for s in SPLITS} == by_index_rule(ordered)  # lists in class-id order
    assert "Closer Look at Few-shot Classification" in spec["_source"]


def test_cars_split_is_the_project_rule_by_class_id_98_49_49():
    spec = load(CARS_SPLIT)
    by_id = spec["_class_names_by_id"]  # cars_meta.mat class_names, entry k = class id k + 1
    assert len(by_id) == 196 and len(set(by_id)) == 196
    assert [len(spec[s]) for s in SPLITS] == [98, 49, 49]
    assert set(n for s in SPLITS for n in spec[s]) == set(by_id)
    assert {s: spec[s] for s in SPLITS} == by_index_rule(by_id)  # lists in class-id order
    assert by_id[0] == "AM General Hummer SUV 2000" and by_id[1] == "Acura RL Sedan 2012"
    assert by_id[173] == "Ram C/V Cargo Van Minivan 2012"
    assert by_id[195] == "smart fortwo Convertible 2012"
    assert "this project" in spec["_source"]


def test_cifar_fs_split_is_64_16_20():
    spec = load(CIFAR_FS_SPLIT)
    assert [len(spec[s]) for s in SPLITS] == [64, 16, 20]
