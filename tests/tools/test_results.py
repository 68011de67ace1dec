"""Row and column labels of finished runs, from the repository's own configs."""

import pytest
from omegaconf import OmegaConf

from lil_meta.engine.config import load_config
from lil_meta.tools.results import Cell, row_label
from lil_meta.tools.results import column_label as column
from tests_helpers import ROOT


@pytest.mark.parametrize("config, label, family", [
    ("maml_5shot", "MAML (5)", "MAML (5)"),
    ("maml_lil_1shot", "MAML + LIL (1)", "MAML (1)"),
    ("maml_pc_5shot", "MAML + PC (5)", "MAML (5)"),
    ("maml_ac_5shot", "MAML + AC (5)", "MAML (5)"),
    ("fomaml_lil_1shot", "FOMAML + LIL (1)", "FOMAML (1)"),
    ("fomaml_phase_5shot", "FOMAML + PC (5)", "FOMAML (5)"),
    ("anil_lil_1shot", "ANIL + LIL (1)", "ANIL (1)"),
    ("boil_resnet12_5shot", "ResNet-12 BOIL (5)", "ResNet-12 BOIL (5)"),
    ("random_init_1shot", "Random-init (1)", "init (1)"),
    ("lil_init_5shot", "LIL-init (5)", "init (5)"),
    ("maml_shot_5shot", "MAML + SHOT (5)", "MAML (5)"),
    ("maml_shot_one_step_1shot", "MAML + SHOT (one-step) (1)", "MAML (1)"),
])
def test_row_labels_follow_the_paper(config, label, family):
    row = row_label(load_config(ROOT / "configs" / f"{config}.yaml"))
    assert (row.label, row.family) == (label, family)


def test_rows_sort_by_shot_then_algorithm_then_variant():
    names = ["boil_5shot", "maml_lil_1shot", "lil_init_1shot", "maml_1shot", "anil_1shot", "random_init_1shot"]
    rows = sorted((row_label(load_config(ROOT / "configs" / f"{n}.yaml")) for n in names), key=lambda r: r.order)
    assert [r.label for r in rows] == ["Random-init (1)", "LIL-init (1)", "MAML (1)", "MAML + LIL (1)",
                                       "ANIL (1)", "BOIL (5)"]


def test_shot_rows_follow_lil_and_a_shot_term_on_lil_names_both():
    names = ["maml_shot_one_step_5shot", "maml_shot_5shot", "maml_lil_5shot", "maml_5shot", "maml_pc_5shot"]
    rows = sorted((row_label(load_config(ROOT / "configs" / f"{n}.yaml")) for n in names), key=lambda r: r.order)
    assert [r.label for r in rows] == ["MAML (5)", "MAML + PC (5)", "MAML + LIL (5)", "MAML + SHOT (5)",
                                       "MAML + SHOT (one-step) (5)"]
    both = OmegaConf.merge(load_config(ROOT / "configs" / "maml_5shot.yaml"),
                           {"losses": [{"name": "cross_entropy"}, {"name": "phase"}, {"name": "shot"}]})
    assert row_label(both).label == "MAML + PC + SHOT (5)"


def test_columns_name_the_dataset_or_the_domain_pair():
    assert column(load_config(ROOT / "configs" / "maml_5shot.yaml")) == "glyphs"
    assert column(load_config(ROOT / "configs" / "maml_lil_mini_5shot.yaml")) == "miniImageNet"
    assert column(load_config(ROOT / "configs" / "maml_mini2cub_5shot.yaml")) == "miniImageNet→CUB"


def test_cell_std_is_the_sample_std():
    cell = Cell([60.0, 62.0, 64.0], [0, 1, 2])
    assert cell.mean == 62.0 and cell.std == 2.0
    assert Cell([50.0], [0]).std != Cell([50.0], [0]).std  # nan for one seed
