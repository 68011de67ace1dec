"""TrainerBase hook order, MetaTrainer step, writers, lr schedule, exact in-process resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from engine.checkpoint import Checkpointer
from engine.config import Config
from engine.defaults import build_lr_scheduler, build_optimizer
from engine.errors import ConfigError
from engine.hooks import EvalHook, LRScheduler, PeriodicCheckpointer, PeriodicWriter, PhaseBoundary
from engine.trainer import EventStorage, HookBase, MetaTrainer, TrainerBase


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


def test_storage_window_means():
    s = EventStorage()
    for it, v in enumerate([1.0, 2.0, 3.0, 4.0]):
        s.iter = it
        s.put_scalars(loss=v)
    s.put_scalar("val/acc", 50.0)
    assert s.window_means(2) == {"loss": 3.5, "val/acc": 50.0}
    assert s.latest()["loss"] == (3, 4.0)


def make_cfg(**overrides):
    cfg = OmegaConf.structured(Config)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


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
    with pytest.raises(FloatingPointError, match=r"iteration 0: .*not finite.*loss=nan.*loss_ce=nan"):
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
