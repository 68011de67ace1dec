import pytest
import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.layers import TaskBatchNorm2d
from lil_meta.models.backbones.resnet12 import DropBlock, ResNet12
from tests_helpers import tiny_batch


def resnet12_parameters(in_channels, widths, way):
    """By hand: per block three bias-free conv3×3 (9·cin·w + 2·9·w·w), a bias-free 1×1 shortcut
    (cin·w) and four BatchNorms with γ and β (4·2·w); then the head (w₄·way + way)."""
    total, cin = 0, in_channels
    for w in widths:
        total += 9 * cin * w + 2 * 9 * w * w + cin * w + 4 * 2 * w
        cin = w
    return total + widths[-1] * way + way


def test_parameter_count_at_84_with_a_5_way_head():
    model = ResNet12(num_classes=5, in_channels=3, image_size=84)
    count = sum(p.numel() for p in model.parameters())
    # the default, TADAM's widths: 76,160 + 377,856 + 1,509,376 + 6,033,408 (blocks) + 2,565 (head)
    assert count == resnet12_parameters(3, (64, 128, 256, 512), 5) == 7_999_365
    assert model.head.in_features == 512 and not list(model.buffers())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16 and all(c.bias is None for c in convs)
    assert sum(isinstance(m, TaskBatchNorm2d) for m in model.modules()) == 16
    wide = ResNet12(num_classes=5, in_channels=3, image_size=84, widths=(64, 160, 320, 640))
    # MetaOptNet's: 76,160 + 564,480 + 2,357,760 + 9,425,920 (blocks) + 3,205 (head)
    assert sum(p.numel() for p in wide.parameters()) == resnet12_parameters(3, (64, 160, 320, 640), 5) == 12_427_525


def test_forward_backward_shapes_at_84():
    model = ResNet12(num_classes=5, in_channels=3, image_size=84)
    x = torch.rand(2, 3, 84, 84, requires_grad=True)
    features = model.features(x)
    assert features.shape == (2, 512)
    logits = model.head(features)
    assert logits.shape == (2, 5)
    logits.square().sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


@pytest.mark.parametrize("size", [16, 28, 32])
def test_any_size_from_16_pools_to_the_last_width(size):
    model = ResNet12(num_classes=3, in_channels=1, image_size=size, widths=(2, 3, 4, 5))
    assert model(torch.rand(4, 1, size, size)).shape == (4, 3)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="data.image_size: resnet12 needs >= 16"):
        ResNet12(image_size=8)
    with pytest.raises(ValueError, match="four positive widths"):
        ResNet12(widths=(4, 4, 4))
    with pytest.raises(ValueError, match="drop_block"):
        ResNet12(drop_block=1.5)


def test_drop_block_is_off_by_default_and_only_active_in_training():
    assert not any(isinstance(m, DropBlock) for m in ResNet12(widths=(2, 3, 4, 5)).modules())
    torch.manual_seed(0)
    model = ResNet12(num_classes=3, in_channels=1, image_size=32, widths=(2, 3, 4, 5), drop_block=0.3)
    assert sum(isinstance(m, DropBlock) for m in model.modules()) == 2
    x = torch.rand(6, 1, 32, 32)
    clean = ResNet12(num_classes=3, in_channels=1, image_size=32, widths=(2, 3, 4, 5))
    clean.load_state_dict(model.state_dict())
    assert torch.equal(model.eval()(x), clean(x))
    assert not torch.equal(model.train()(x), clean(x))
    drop = DropBlock(0.2, 3).train()
    kept = (drop(torch.ones(50, 8, 12, 12)) > 0).float().mean().item()
    assert 0.7 < kept < 0.9  # about 20 % dropped (blocks overlap, so a little less)


def test_tiny_resnet12_runs_maml_and_vmap_matches_loop_fp64():
    torch.manual_seed(0)
    model = ResNet12(num_classes=5, in_channels=1, image_size=16, widths=(3, 4, 5, 6)).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=2)))
    results = {}
    for engine in ("vmap", "loop"):
        algo = GBML(model, inner_lr=0.3, inner_steps=2, execution={"engine": engine})
        algo.zero_grad(set_to_none=True)
        out = algo(batch)
        out["loss"].backward()
        results[engine] = (out["loss"].detach(), [p.grad for p in algo.parameters()])
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-10, atol=0)
    for a, b in zip(results["vmap"][1], results["loop"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in results["loop"][1])
