"""The variant API around GBML: out-of-tree registration through ``extra_modules``, the
``extra_terms`` hook, and the ``adapt`` option's checks."""

import sys

import pytest
import torch
from torch import nn

from lil_meta.engine.config import load_config
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models import build_algorithm
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import ROOT, tiny_batch

USER_MODULE = '''
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models.algorithms.base import GBML


@ALGORITHMS.register("{name}")
class HeadAndLastBlock(GBML):
    def adapted_names(self):
        return [n for n in super().adapted_names() if n.startswith(("features.3.", "head."))]
'''


def test_extra_modules_registers_an_out_of_tree_variant(tmp_path, monkeypatch):
    name = "user_variant_for_test"
    (tmp_path / f"{name}.py").write_text(USER_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [f"extra_modules=[{name}]", f"algorithm.name={name}", "data.image_size=16", "model.backbone.hidden=3"]
    cfg = load_config(ROOT / "configs" / "maml_5shot.yaml", overrides)
    assert name not in ALGORITHMS
    try:
        algo = build_algorithm(cfg)
        assert type(algo).__name__ == "HeadAndLastBlock" and name in ALGORITHMS
        assert algo.adapted_names() == ["features.3.0.weight", "features.3.1.weight", "features.3.1.bias",
                                        "head.weight", "head.bias"]
        out = algo(tiny_batch())
        out["loss"].backward()
        assert all(p.grad is not None for p in algo.parameters())
    finally:
        ALGORITHMS._entries.pop(name, None)
        sys.modules.pop(name, None)


class Shrink(GBML):
    def extra_terms(self, per_task):
        return {"shrink": 0.5 * per_task["step_norms"].sum(-1).mean()}


def test_extra_terms_are_added_to_the_loss_and_reported():
    torch.manual_seed(0)
    model = Conv4(5, 1, 16, hidden=3)
    plain, shrink = GBML(model, inner_steps=2), Shrink(model, inner_steps=2)
    batch = tiny_batch()
    out, base = shrink(batch), plain(batch)
    torch.testing.assert_close(out["loss_shrink"], 0.5 * out["traj_len"])
    torch.testing.assert_close(out["loss"], base["loss"] + out["loss_shrink"])
    assert out["loss"].requires_grad


def test_an_extra_term_may_not_shadow_a_loss_term():
    class Clash(GBML):
        def extra_terms(self, per_task):
            return {"ce": per_task["logits"].sum()}

    with pytest.raises(ValueError, match="extra_terms\\(\\): the term 'ce' is also in the losses list"):
        Clash(Conv4(5, 1, 16, hidden=3), inner_steps=1)(tiny_batch())


def test_adapt_option_is_checked():
    with pytest.raises(ConfigError, match="algorithm.adapt: expected one of all, head, body; got 'neck'"):
        GBML(Conv4(5, 1, 16, hidden=3), adapt="neck")
    headless = nn.Sequential(nn.Flatten(), nn.Linear(256, 5))
    with pytest.raises(ConfigError, match="algorithm.adapt=head: the network has no .head module"):
        GBML(headless, adapt="head")
