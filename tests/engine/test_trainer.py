"""TrainerBase hook order, MetaTrainer step, writers, lr schedule, exact in-process resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lil_meta.engine.checkpoint import Checkpointer
from lil_meta.engine.defaults import build_lr_scheduler, build_optimizer
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.hooks import (
    EvalHook,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PhaseBoundary,
)
from lil_meta.engine.trainer import HookBase, MetaTrainer, NumericalFault, TrainerBase
from lil_meta.models.algorithms.metrics import describe_nonfinite
from tests_helpers import schema_config


class Recorder(HookBase):
    def __init__(self, log, name="h"):
        self.log, self.name = log, name

    def before_train(self):
        self.log.append(f"{self.name}.before_train@{self.trainer.iter}")

    def before_step(self):
        self.log.append(f"{self.name}.before_step@{self.trainer.iter}")

    def after_step(self):
        self.log.append(f"{self.name}.after_step@{self.trainer.iter}")

    def after_train(self):
        self.log.append(f"{self.name}.after_train@{self.trainer.iter}")


def test_hook_order():
    log = []

    class Counting(TrainerBase):
        def run_step(self):
            log.append(f"step@{self.iter}")

    trainer = Counting()
    trainer.register_hooks([Recorder(log, "a"), None, Recorder(log, "b")])
    trainer.train(1, 3)
    assert log == [
        "a.before_train@1", "b.before_train@1",
        "a.before_step@1", "b.before_step@1", "step@1", "a.after_step@1", "b.after_step@1",
        "a.before_step@2", "b.before_step@2", "step@2", "a.after_step@2", "b.after_step@2",
        "a.after_train@3", "b.after_train@3",
    ]
    assert trainer.iter == 3


def make_cfg(**overrides):
    return schema_config(**overrides)


def make_trainer(tiny, tmp_path, cfg, log_period=2, checkpoint_period=0, eval_period=0):
    torch.manual_seed(0)
    algo = tiny.Algorithm()
    optimizer = build_optimizer(cfg, algo)
    trainer = MetaTrainer(algo, tiny.Sampler(meta_batch=2), optimizer)
    ck = Checkpointer(tmp_path, keep=0, cfg=cfg)
    hooks = [LRScheduler(optimizer, build_lr_scheduler(cfg, optimizer))]
    if eval_period:
        hooks.append(EvalHook(eval_period, tiny.TaskList(5), ck, batch_size=2, device="cpu"))
    if checkpoint_period:
        hooks.append(PeriodicCheckpointer(ck, checkpoint_period))
    hooks.append(PeriodicWriter(tmp_path, log_period))
    trainer.register_hooks(hooks)
    return trainer, ck


def test_meta_trainer_writes_metrics_jsonl_and_tensorboard(tiny, tmp_path):
    trainer, _ = make_trainer(tiny, tmp_path, make_cfg(), log_period=2, eval_period=4)
    trainer.train(0, 5)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == [2, 4, 5]
    for entry in lines:
        assert {"loss", "loss_ce", "acc", "lr", "tasks_per_s", "time"} <= entry.keys()
        assert "task_acc" not in entry  # only scalars are logged
        assert all(isinstance(v, (int, float)) for v in entry.values())
    assert "val/acc" in lines[1] and "val/acc" in lines[2] and "val/acc" not in lines[0]
    assert lines[0]["lr"] == pytest.approx(1e-3)
    assert list(tmp_path.glob("events.out.tfevents.*")), "TensorBoard event file"
    assert (tmp_path / "model_best.pth").is_file()


def test_non_finite_loss_names_iteration_and_terms(tiny, tmp_path):
    trainer, _ = make_trainer(tiny, tmp_path, make_cfg())
    trainer.algorithm.loss_scale = float("nan")
    with pytest.raises(FloatingPointError, match=r"iteration 0: non-finite loss \(loss=nan, loss_ce=nan\)"):
        trainer.train(0, 3)
    assert not list(tmp_path.glob("model_*.pth"))


def test_lr_schedules():
    def lrs(**kw):
        cfg = make_cfg(**{f"solver.{k}": v for k, v in kw.items()})
        opt = build_optimizer(cfg, torch.nn.Linear(1, 1))
        sched = build_lr_scheduler(cfg, opt)
        out = []
        for _ in range(cfg.solver.max_iter):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(max_iter=3, lr=0.1) == pytest.approx([0.1, 0.1, 0.1])
    warm = lrs(max_iter=6, lr=0.1, warmup_iters=2, lr_schedule="cosine")
    assert warm[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert warm[3] == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()))
    assert warm[-1] < warm[3]
    floored = lrs(max_iter=4, lr=0.1, lr_schedule="cosine", min_lr=0.01)  # MAML++'s cosine annealing
    assert floored[0] == pytest.approx(0.1) and floored[2] == pytest.approx(0.01 + 0.09 * 0.5)
    assert lrs(max_iter=9, lr=0.1, lr_schedule="cosine", min_lr=0.02)[-1] > 0.02
    with pytest.raises(ConfigError, match=r"solver\.min_lr: must be >= 0 and below solver\.lr=0\.1, got 0\.2"):
        lrs(lr=0.1, lr_schedule="cosine", min_lr=0.2)
    with pytest.raises(ConfigError, match="solver.lr_schedule"):
        lrs(lr_schedule="step")
    with pytest.raises(ConfigError, match="solver.optimizer"):
        lrs(optimizer="lamb")


def test_exact_resume_in_process(tiny, tmp_path):
    """Stop after 3 of 6 iterations, resume in a fresh trainer: bit-identical weights."""
    cfg = make_cfg(**{"solver.lr_schedule": "cosine", "solver.warmup_iters": 2, "solver.max_iter": 6})
    full, _ = make_trainer(tiny, tmp_path / "a", cfg, eval_period=2)
    full.train(0, 6)

    first, _ = make_trainer(tiny, tmp_path / "b", cfg, checkpoint_period=3, eval_period=3)
    first.train(0, 3)
    torch.manual_seed(123)  # a fresh process would start from another RNG state
    second, ck = make_trainer(tiny, tmp_path / "b", cfg, checkpoint_period=3, eval_period=3)
    start = second.load_state_dict(ck.resume_or_load())
    assert start == 3
    second.train(start, 6)
    for key, value in full.algorithm.state_dict().items():
        assert torch.equal(value, second.algorithm.state_dict()[key]), key
    assert [json.loads(x)["iter"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] \
        == [2, 3, 4, 6]


def test_phase_boundary_clears_the_optimizer_state_once():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    hook = PhaseBoundary(opt, iteration=5)
    hook.trainer = SimpleNamespace(iter=4)
    hook.before_step()
    assert opt.state[w]["step"] == 1
    hook.trainer.iter = 5
    hook.before_step()
    assert w not in opt.state
    opt.step()  # Adam starts afresh: its first step moves every weight by lr
    assert torch.allclose(w.detach(), torch.full((3,), 1 - 0.2))


class Faulty(torch.nn.Module):
    """loss = (w·x)² per batch, made NaN (loss) or its gradient inf on chosen calls; the
    diagnosis from ``task_logits_finite`` is the algorithms' own."""

    def __init__(self, nan_at=(), inf_grad_at=()):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.calls, self.nan_at, self.inf_grad_at = 0, set(nan_at), set(inf_grad_at)

    def begin_step(self, step):
        pass

    def diagnose(self, out, rank=0):
        return describe_nonfinite(out, rank=rank)

    def forward(self, batch, step=0):
        i, self.calls = self.calls, self.calls + 1
        loss = (self.w.sum() * float(batch)) ** 2
        if i in self.nan_at:
            loss = loss * float("nan")
        if i in self.inf_grad_at:
            loss = loss + torch.sqrt(self.w.sum() - 2)  # finite value 0, infinite gradient
        return {"loss": loss, "task_acc": torch.zeros(2), "task_logits_finite": torch.tensor([True, i not in self.nan_at])}


class Scalar(float):
    """A one-number 'batch' with what the trainer asks of a batch (``num_tasks``, ``to``)."""

    num_tasks = 2

    def to(self, device, non_blocking=False):
        return self


class Numbers:
    def __init__(self):
        self.n = 0

    def next_batch(self):
        self.n += 1
        return Scalar(0.1 * self.n)

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def faulty_trainer(algo, **kwargs):
    return MetaTrainer(algo, Numbers(), torch.optim.SGD(algo.parameters(), lr=0.1), **kwargs)


def test_stop_policy_raises_with_the_state_from_before_the_iteration():
    trainer = faulty_trainer(Faulty(nan_at={2}))
    with pytest.raises(NumericalFault, match=r"iteration 2: non-finite loss \(loss=nan\): non-finite query logits "
                                             r"in task\(s\) 1; training stopped") as info:
        trainer.train(0, 5)
    state = info.value.state
    assert state["iteration"] == 2 and state["sampler"] == {"n": 2}  # iteration 2 is redone on resume
    assert torch.isfinite(trainer.algorithm.w).all()
    assert torch.equal(state["model"]["w"], trainer.algorithm.w.detach())


def test_skip_policy_drops_the_batch_then_stops_past_the_limit():
    algo = Faulty(nan_at={1, 3, 4})
    trainer = faulty_trainer(algo, on_nonfinite="skip", max_skips=2)
    w_before = []
    trainer.register_hooks([type("Snap", (HookBase,), {"before_step": lambda self: w_before.append(algo.w.detach().clone())})()])
    with pytest.raises(NumericalFault, match=r"iteration 4: .* after 2 skipped batches \(solver.max_skips\)"):
        trainer.train(0, 6)
    assert trainer.skipped == 2
    assert torch.equal(w_before[1], w_before[2])  # iteration 1 was skipped: no update
    assert not torch.equal(w_before[0], w_before[1])


def test_gradient_faults_and_clipping():
    trainer = faulty_trainer(Faulty(inf_grad_at={0}))
    with pytest.raises(NumericalFault, match=r"iteration 0: non-finite meta-gradient \(the loss was finite\)"):
        trainer.train(0, 1)
    clipped = faulty_trainer(Faulty(), clip_grad_norm=1e-3)
    clipped.train(0, 1)
    assert abs(clipped.storage.latest()["grad_norm"][1]) > 1e-3  # the norm before clipping is logged
    assert torch.allclose(clipped.algorithm.w, torch.ones(2) - 0.1 * 1e-3 / 2**0.5, atol=1e-7)


class FixedBatches:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def chunked_run(task_chunk: int, pretrain: bool):
    from lil_meta.losses import build_losses
    from lil_meta.models.algorithms.base import GBML
    from lil_meta.models.algorithms.chain import PretrainThen
    from lil_meta.models.algorithms.lil_pretrain import LILPretrain
    from lil_meta.models.backbones.conv4 import Conv4
    from tests_helpers import tiny_batch

    torch.manual_seed(0)
    net = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    losses = build_losses([{"name": "cross_entropy"}, {"name": "phase", "weight": 0.1},
                           {"name": "pseudo_amplitude", "weight": 0.1}])
    algo = GBML(net, inner_lr=0.4, inner_steps=2, losses=losses, execution={"engine": "loop"}, diagnostics={"metrics_period": 2})
    if pretrain:
        algo = PretrainThen(LILPretrain(net, momentum=0.5, inner_lr=0.4, inner_steps=2, execution={"engine": "loop"}), algo, 2)
    batches = [tiny_batch(tasks=4, size=16, seed=s) for s in range(3)]
    batches = [type(b)(*(t.double() if t.is_floating_point() else t for t in b)) for b in batches]
    trainer = MetaTrainer(algo, FixedBatches(batches), torch.optim.SGD(algo.parameters(), lr=0.1),
                          task_chunk=task_chunk)
    sizes = []
    algo.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(args[0].num_tasks), with_kwargs=True)
    trainer.train(0, 4)
    history = {k: [v for _, v in trainer.storage.history(k)] for k in ("loss", "acc", "acc_init", "pc")}
    history["chunk sizes"] = sizes
    return [p.detach() for p in net.parameters()], history


@pytest.mark.parametrize("pretrain", [False, True])
def test_task_chunks_give_the_same_training(pretrain):
    """Chunks of 1 and 3 tasks and ``auto`` (on the per-task loop: one task at a time, in both
    phases of a chain) train as the whole batch does, to fp64 rounding."""
    whole, whole_history = chunked_run(0, pretrain)
    assert set(whole_history.pop("chunk sizes")) == {4}
    by_chunk = {}
    for chunk in (1, 3, "auto"):  # even and uneven chunks
        weights, history = chunked_run(chunk, pretrain)
        assert set(history.pop("chunk sizes")) == ({1} if chunk == "auto" else {chunk, 4 % chunk} - {0})
        by_chunk[chunk] = weights
        for a, b in zip(whole, weights, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert history.keys() == whole_history.keys()
        for key, values in whole_history.items():
            assert len(history[key]) == len(values), key  # same logging schedule
            tol = 1e-6 if key.startswith("acc") else 1e-10  # accuracies are float32 means
            torch.testing.assert_close(torch.tensor(history[key]), torch.tensor(values), rtol=tol, atol=tol)
    for a, b in zip(by_chunk[1], by_chunk["auto"], strict=True):
        assert torch.equal(a, b)


class OutOfMemoryAbove(torch.nn.Module):
    """A batched algorithm (``auto_task_chunk`` 0) that runs out of memory on chunks of more than
    ``fit`` tasks: on more than ``fit + 1`` at once, and on ``fit + 1`` once an earlier chunk of
    the step has left gradients (so a failure can come after part of the step's gradient)."""

    def __init__(self, inner, fit):
        super().__init__()
        self.inner, self.fit, self.calls = inner, fit, []

    def auto_task_chunk(self, device, step=0):
        return 0

    def begin_step(self, step):
        self.inner.begin_step(step)

    def diagnose(self, out, rank=0):
        return None

    def forward(self, batch, step=0):
        self.calls.append(batch.num_tasks)
        started = any(p.grad is not None for p in self.parameters())
        if batch.num_tasks > self.fit + 1 or (batch.num_tasks > self.fit and started):
            raise torch.OutOfMemoryError("out of memory (a test)")
        return self.inner(batch, step)


def test_auto_chunk_under_vmap_falls_back_to_the_largest_chunk_that_fits(tiny, caplog):
    """8 tasks at once do not fit, nor 4 (the second chunk fails after the first has left its
    gradient); 3 do. The step then computes exactly what ``task_chunk=3`` computes (the same
    random state for each try: the algorithm draws noise), and later steps keep 3."""
    runs = {}
    for chunk in ("auto", 3):
        torch.manual_seed(0)
        algo = OutOfMemoryAbove(tiny.Algorithm(), fit=3)
        trainer = MetaTrainer(algo, tiny.Sampler(meta_batch=8), torch.optim.SGD(algo.parameters(), lr=0.1),
                              task_chunk=chunk)
        with caplog.at_level("INFO"):
            trainer.train(0, 3)
        runs[chunk] = algo
    assert runs["auto"].calls == [8, 4, 4, 2, 2, 2, 2, 3, 3, 2] + [3, 3, 2] * 2
    assert "8 tasks at a time do not fit in cpu memory; 3 at a time from now on" in caplog.text
    for a, b in zip(runs["auto"].parameters(), runs[3].parameters(), strict=True):
        assert torch.equal(a, b)
