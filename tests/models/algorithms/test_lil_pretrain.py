"""LIL pretraining (docs/design.md §1.1) against a naive, explicit per-task computation in fp64
(``tests/naive_reference.py``), and the two-phase chain (pretraining, then the main algorithm)
over one network."""

import copy

import pytest
import torch

from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.chain import PretrainThen
from lil_meta.models.algorithms.lil_pretrain import LILPretrain
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import Flat, kl, path_length, straight_step
from tests_helpers import as_double, tiny_batch

LR, STEPS, MOMENTUM, WEIGHT = 0.4, 3, 0.9, 0.1


def naive_pretrain_loss(student, teacher_vec, batch, first_order):
    """Teacher: S explicit SGD steps from its own vector, no graph. Student: one straight step of
    the teacher's trajectory length along its own first step Δ⁰ = −α g⁰, g⁰ = ∇ CE at θ⁰.
    Loss: weight · KL(P ‖ Q̂), mean."""
    flat = Flat(student, LR)
    kls = []
    for i in range(batch.num_tasks):
        sx, sy, qx = batch.support_x[i], batch.support_y[i], batch.query_x[i]
        teacher, _ = flat.trajectory(sx, sy, STEPS, "none", start=teacher_vec)
        first, _ = flat.trajectory(sx, sy, 1, "first" if first_order else "second")
        p_logits = flat.logits(teacher[-1], qx).detach()
        kls.append(kl(p_logits, flat.logits(straight_step(first, path_length(teacher)), qx)))
    return WEIGHT * torch.stack(kls).mean()


def network(seed=0):
    torch.manual_seed(seed)
    return Conv4(in_channels=1, num_classes=5, hidden=6, image_size=16).double()


def double_batch(tasks=2):
    return as_double(tiny_batch(tasks=tasks, size=16))


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_loss_and_gradient_match_the_naive_reference(engine, first_order):
    model = network()
    algo = LILPretrain(model, momentum=MOMENTUM, weight=WEIGHT, inner_lr=LR, inner_steps=STEPS, first_order=first_order, execution={"engine": engine}).double()
    with torch.no_grad():  # a teacher that differs from the student, as after some training
        for p in algo.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    teacher_before = torch.cat([p.flatten() for p in algo.teacher.parameters()]).clone()
    student_vec = torch.cat([p.flatten() for p in model.parameters()]).detach()
    batch = double_batch(tasks=3)

    algo.begin_step(0)  # the step's once-per-step call: the EMA update
    out = algo(batch)
    out["loss"].backward()
    got = [p.grad.clone() for p in model.parameters()]

    # the EMA update happens first, so the reference teacher is the updated one
    teacher_vec = MOMENTUM * teacher_before + (1 - MOMENTUM) * student_vec
    reference = copy.deepcopy(model)
    for p in reference.parameters():
        p.grad = None
    want_loss = naive_pretrain_loss(reference, teacher_vec, batch, first_order)
    want = torch.autograd.grad(want_loss, list(reference.parameters()))

    assert torch.allclose(out["loss"], want_loss, rtol=1e-9, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-7, atol=1e-10)
    assert all(p.grad is None for p in algo.teacher.parameters())
    new_teacher = torch.cat([p.flatten() for p in algo.teacher.parameters()])
    assert torch.allclose(new_teacher, teacher_vec, rtol=0, atol=1e-15)


def test_the_loss_ignores_query_labels():
    model = network()
    algo = LILPretrain(model, inner_lr=LR, inner_steps=STEPS, execution={"engine": "loop"}).double()
    batch = double_batch()
    shuffled = batch._replace(query_y=batch.query_y.flip(-1).roll(1, -1))
    a = algo(batch)["loss"]
    algo.teacher.load_state_dict(model.state_dict())  # the same teacher for the second call
    algo2 = copy.deepcopy(algo)
    b = algo2(shuffled)["loss"]
    assert torch.equal(a.detach(), b.detach())


def test_eval_mode_is_plain_adaptation_of_the_student():
    model = network()
    algo = LILPretrain(model, inner_lr=LR, inner_steps=STEPS, execution={"engine": "loop"}).double().eval()
    plain = GBML(model, inner_lr=LR, inner_steps=STEPS, execution={"engine": "loop"}).double().eval()
    batch = double_batch()
    assert torch.equal(algo(batch)["task_acc"], plain(batch)["task_acc"])


def test_bad_arguments_are_config_errors():
    with pytest.raises(ValueError, match="algorithm.momentum"):
        LILPretrain(network(), momentum=1.0)
    with pytest.raises(ValueError, match="algorithm.inner_steps"):
        LILPretrain(network(), inner_steps=0)


def test_chain_switches_phase_after_the_pretraining_forwards():
    model = network()
    pre = LILPretrain(model, inner_lr=LR, inner_steps=1, execution={"engine": "loop"})
    main = GBML(model, inner_lr=LR, inner_steps=1, first_order=True, losses=[CrossEntropy()], execution={"engine": "loop"})
    chain = PretrainThen(pre, main, pretrain_iters=2).double()
    batch = double_batch()
    phases = []
    for step in range(3):
        chain.begin_step(step)
        phases.append(chain(batch, step=step))
    assert [float(o["phase"]) for o in phases] == [0.0, 0.0, 1.0]
    assert "loss_lil_pretrain" in phases[1] and "loss_ce" in phases[2]
    # the state dict carries the teacher; the phase is the trainer's step's
    net = network(seed=1)
    restored = PretrainThen(LILPretrain(net, inner_steps=1), GBML(net), 2).double()
    restored.load_state_dict(chain.state_dict())
    assert restored.phase(2)[0] == 1 and restored.phase(1)[0] == 0
    assert torch.equal(restored.pretrain.teacher.head.weight, chain.pretrain.teacher.head.weight)
    with pytest.raises(ValueError, match="share one network"):
        PretrainThen(LILPretrain(network()), GBML(network()), 1)
