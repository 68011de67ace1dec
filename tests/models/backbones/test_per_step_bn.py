"""Per-step BatchNorm weights (MAML++'s BNWB): one row of γ, β per inner step, chosen by the step
the network is handed, in Conv4 and ResNet-12 alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lil_meta.engine.errors import ConfigError
from lil_meta.models.backbones.conv4 import Conv4
from lil_meta.models.backbones.layers import TaskBatchNorm2d, per_step_parameters
from lil_meta.models.backbones.resnet12 import ResNet12


def test_each_step_normalises_with_its_own_row_and_a_step_outside_the_rows_is_refused():
    torch.manual_seed(0)
    bn = TaskBatchNorm2d(4, steps=3).double()
    assert bn.weight.shape == bn.bias.shape == (3, 4)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, 4, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(3, 4, dtype=torch.float64))
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    outs = [bn(x, step=k) for k in range(3)]
    for k, out in enumerate(outs):
        ref = F.batch_norm(x, None, None, bn.weight[k], bn.bias[k], training=True, eps=bn.eps)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(outs[0], outs[1])
    (outs[1] * torch.randn_like(outs[1])).sum().backward()
    assert bn.weight.grad[1].abs().sum() > 0 and bn.weight.grad[[0, 2]].abs().sum() == 0  # only row 1 is used
    for step in (None, 3, -1):
        with pytest.raises(ValueError, match=rf"rows for inner steps 0\.\.2; the forward was asked for step {step}"):
            bn(x, step=step)


def test_a_plain_layer_ignores_the_step():
    bn = TaskBatchNorm2d(4).double()
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(bn(x, step=2), bn(x), rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["conv4", "resnet12"])
def test_backbones_take_the_step_only_with_per_step_weights(backbone):
    def build(**kw):
        torch.manual_seed(0)
        if backbone == "conv4":
            return Conv4(num_classes=3, in_channels=1, image_size=16, hidden=4, **kw)
        return ResNet12(num_classes=3, in_channels=1, image_size=16, widths=(2, 3, 4, 5), **kw)

    plain, stepped = build(), build(per_step_bn=True, bn_steps=3)
    names, rows = per_step_parameters(stepped)
    bn_names = {n for n, m in stepped.named_modules() if isinstance(m, TaskBatchNorm2d)}
    assert names == {f"{n}.{p}" for n in bn_names for p in ("weight", "bias")} and rows == 3
    assert per_step_parameters(plain) == (set(), 0) and not getattr(plain, "takes_step", False)
    assert stepped.takes_step
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in stepped.named_parameters()]
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(stepped(x, step=2), plain(x), rtol=0, atol=0)  # rows start as the plain layer's
    torch.testing.assert_close(stepped(x, step=1), stepped.head(stepped.features(x, step=1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="model.backbone.per_step_bn"):
        stepped(x)
    with pytest.raises(ConfigError, match=r"model\.backbone\.bn_steps: .* needs >= 1 rows"):
        build(per_step_bn=True, bn_steps=0)
