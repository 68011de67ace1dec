"""Checkpointer: atomic saves, rotation, last_checkpoint, weights_only loads, refusals."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lil_meta.engine.checkpoint import Checkpointer, config_fingerprint
from lil_meta.engine.config import load_config
from lil_meta.engine.errors import CheckpointError
from lil_meta.engine.rng import get_rng_state, set_rng_state
from tests_helpers import ROOT, schema_config


def make_cfg(**overrides):
    return schema_config(**overrides)


def model_state():
    return torch.nn.Linear(3, 2).state_dict()


def test_save_writes_atomically_and_tags_last(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path / "run", keep=3, cfg=make_cfg())
    assert not (tmp_path / "run").exists(), "constructing must not write anything"
    path = ck.save("model_0000009", model=model_state(), iteration=10)
    assert path.name == "model_0000009.pth"
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "model_0000009.pth"
    assert ck.get_checkpoint_file() == path
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]

    # A crash while writing leaves the previous file and last_checkpoint untouched.
    before = path.read_bytes()

    def boom(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ck.save("model_0000009", model=model_state(), iteration=10)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last_checkpoint", "model_0000009.pth"]


def test_keep_last_k_and_named_checkpoints_survive(tmp_path):
    ck = Checkpointer(tmp_path, keep=2, cfg=make_cfg())
    ck.save("model_best", model=model_state())
    for it in range(4, 25, 5):
        ck.save(f"model_{it:07d}", model=model_state(), iteration=it + 1)
    ck.save("model_final", model=model_state())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last_checkpoint", "model_0000019.pth", "model_0000024.pth", "model_best.pth",
                     "model_final.pth"]
    # named checkpoints do not move last_checkpoint (they lack the optimizer state etc.)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000024.pth"


def test_load_roundtrip_weights_only_with_rng_and_cpu_tensors(tmp_path):
    cfg = make_cfg()
    ck = Checkpointer(tmp_path, cfg=cfg)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    rng = get_rng_state()
    ck.save("model_0000000", model=model.state_dict(), optimizer=opt.state_dict(), rng=rng,
            iteration=1, sampler={"generator": torch.Generator().get_state()})
    # the file must load with the safe unpickler on its own, not only through Checkpointer
    raw = torch.load(tmp_path / "model_0000000.pth", weights_only=True)
    assert raw["fingerprint"] == config_fingerprint(cfg)[0]
    state = ck.resume_or_load()
    assert all(torch.equal(a, b) for a, b in zip(state["model"].values(), model.state_dict().values(), strict=True))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(state["optimizer"])


def test_resume_or_load_without_checkpoint_returns_none(tmp_path):
    ck = Checkpointer(tmp_path / "absent", cfg=make_cfg())
    assert ck.resume_or_load() is None
    assert not (tmp_path / "absent").exists()


def test_missing_truncated_corrupt_files_name_the_file(tmp_path):
    ck = Checkpointer(tmp_path, cfg=make_cfg())
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint not found"):
        ck.load(tmp_path / "nope.pth")
    good = ck.save("model_0000001", model=model_state())
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pth: cannot read checkpoint"):
        ck.load(tmp_path / "trunc.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.pth: cannot read checkpoint"):
        ck.load(tmp_path / "junk.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: not a checkpoint"):
        ck.load(tmp_path / "other.pth")
    # last_checkpoint naming a file that has gone, and no older checkpoint to fall back to
    (tmp_path / "model_0000001.pth").unlink()
    (tmp_path / "last_checkpoint").write_text("model_0000077.pth")
    with pytest.raises(CheckpointError, match="model_0000077.pth: checkpoint not found"):
        ck.resume_or_load()


def test_an_unreadable_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    ck = Checkpointer(tmp_path, keep=0, cfg=make_cfg())
    for it in (4, 9):
        ck.save(f"model_{it:07d}", model=model_state(), iteration=it + 1)
    data = (tmp_path / "model_0000009.pth").read_bytes()
    (tmp_path / "model_0000009.pth").write_bytes(data[: len(data) // 3])
    with caplog.at_level("WARNING"):
        state = ck.resume_or_load()
    assert state["iteration"] == 5
    assert "model_0000009.pth: cannot read checkpoint" in caplog.text
    assert "resuming from model_0000004.pth instead of model_0000009.pth" in caplog.text
    (tmp_path / "model_0000004.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"model_0000009\.pth: cannot read checkpoint"):
        ck.resume_or_load()  # none loads: the newest one's error


def test_foreign_config_is_refused_naming_file_and_key(tmp_path):
    Checkpointer(tmp_path, cfg=make_cfg(**{"solver.lr": 0.01})).save("model_0000001", model=model_state())
    ck = Checkpointer(tmp_path, cfg=make_cfg())
    with pytest.raises(CheckpointError, match=r"model_0000001\.pth: .*another config.*solver\.lr"):
        ck.resume_or_load()


def _written_before_keys_existed(folder, cfg, drop):
    """A checkpoint as an earlier version wrote it: its config lacks the keys in ``drop``."""
    old = OmegaConf.to_container(cfg)
    for key in drop:
        *parents, last = key.split(".")
        node = old
        for part in parents:
            node = node[part]
        del node[last]
    Checkpointer(folder, cfg=old).save("model_0000001", model=model_state())


def test_a_checkpoint_from_before_a_key_existed_resumes_when_the_key_is_at_its_default(tmp_path):
    """Keys added since (a component argument filled with its default, a new schema key) do
    not stop a resume; a key whose value differs still does."""
    cfg = load_config(ROOT / "configs" / "fomaml_lil_5shot.yaml")
    drop = ["algorithm.diagnostics.hessian_ratio", "algorithm.rates.mode", "pretrain.algorithm.adapt", "solver.clip_grad_norm"]
    _written_before_keys_existed(tmp_path / "a", cfg, drop)
    assert Checkpointer(tmp_path / "a", cfg=cfg).resume_or_load() is not None
    changed = load_config(ROOT / "configs" / "fomaml_lil_5shot.yaml", ["algorithm.rates.mode=per_tensor"])
    _written_before_keys_existed(tmp_path / "b", cfg, drop)
    with pytest.raises(CheckpointError, match=r"another config .*algorithm\.rates\.mode: '<absent>' in checkpoint, "
                                              r"'per_tensor' now"):
        Checkpointer(tmp_path / "b", cfg=changed).resume_or_load()


def test_a_checkpoint_with_the_flat_algorithm_keys_of_earlier_versions_resumes(tmp_path):
    """Before the groups (``algorithm.execution``, ``.diagnostics``, ``.rates``) a config held
    ``algorithm.engine``, ``algorithm.inner_lr_mode``, …: such a checkpoint resumes under the
    grouped config with the same values, and one whose rates differ is still refused."""
    from lil_meta.engine.components import MOVED_KEYS

    def flattened(cfg):
        old = OmegaConf.to_container(cfg)
        for path in ("algorithm", "pretrain"):
            node = old[path] if path == "algorithm" else old[path]["algorithm"]
            for flat, grouped in MOVED_KEYS.items():
                group, key = grouped.split(".")
                if key in node.get(group, {}):
                    node[flat] = node[group].pop(key)
            for group in ("execution", "diagnostics", "rates"):
                node.pop(group, None) if not node.get(group) else None
        return old

    cfg = load_config(ROOT / "configs" / "fomaml_lil_5shot.yaml", ["algorithm.rates.mode=per_tensor"])
    old = flattened(cfg)
    assert old["algorithm"]["inner_lr_mode"] == "per_tensor" and "rates" not in old["algorithm"]
    Checkpointer(tmp_path / "a", cfg=old).save("model_0000001", model=model_state())
    assert Checkpointer(tmp_path / "a", cfg=cfg).resume_or_load() is not None
    scalar = load_config(ROOT / "configs" / "fomaml_lil_5shot.yaml")
    with pytest.raises(CheckpointError, match=r"another config"):
        Checkpointer(tmp_path / "a", cfg=scalar).resume_or_load()


def test_volatile_keys_do_not_change_the_fingerprint():
    base = config_fingerprint(make_cfg())[0]
    changed = make_cfg(**{"solver.max_iter": 7, "output_dir": "/x", "test.tasks": 3, "log.period": 1,
                          "solver.checkpoint_period": 2, "device": "cpu"})
    assert config_fingerprint(changed)[0] == base
    assert config_fingerprint(make_cfg(seed=3))[0] != base


@pytest.mark.parametrize("tag", ["missing", "folder", "nul", "latin-1", "a path", "gone", "weights only"])
def test_a_broken_last_checkpoint_resumes_from_the_newest_intact_one(tmp_path, caplog, tag):
    ck = Checkpointer(tmp_path, keep=0, cfg=make_cfg())
    for it in (1, 3, 5):
        ck.save(f"model_{it:07d}", model=model_state(), iteration=it + 1, optimizer={})
    ck.save("model_best", model=model_state(), iteration=2)
    last = tmp_path / "last_checkpoint"
    last.unlink()
    full = ("iteration", "model", "optimizer")
    if tag == "folder":  # a save could never replace it: refused, not resumed past
        last.mkdir()
        with pytest.raises(CheckpointError, match=r"last_checkpoint: a folder, not a file"):
            ck.resume_or_load(required=full)
        return
    content = {"nul": b"\0" * 17, "latin-1": b"model_\xe9.pth", "a path": b"../model_0000005.pth",
               "gone": b"model_0000099.pth", "weights only": b"model_best.pth"}.get(tag)
    if content is not None:
        last.write_bytes(content)
    with caplog.at_level("WARNING"):
        assert ck.resume_or_load(required=full)["iteration"] == 6
    assert "resuming from model_0000005.pth instead of" in caplog.text and "\0" not in caplog.text
    for path in tmp_path.glob("model_0*.pth"):
        path.write_bytes(b"junk")
    expected = (r"model_best\.pth: not a training state to resume \(no optimizer\)" if tag == "weights only"
                else r"model_0000005\.pth: cannot read checkpoint")
    with pytest.raises(CheckpointError, match=expected):
        ck.resume_or_load(required=full)  # none loads: the error of the newest file there is


def test_a_checkpoint_records_the_settings_a_resume_compares(tmp_path):
    from lil_meta.engine.resume import resume_notes

    cfg = make_cfg(**{"solver.lr_schedule": "cosine", "solver.max_iter": 10})
    Checkpointer(tmp_path, cfg=cfg).save("model_0000003", model=model_state())
    state = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert state["settings"]["num_threads"] == torch.get_num_threads()
    assert resume_notes(state, cfg, 4) == []
    notes = resume_notes(state, make_cfg(**{"solver.lr_schedule": "cosine", "solver.max_iter": 20,
                                            "solver.task_chunk": 1}), 4)
    assert len(notes) == 2
    assert "solver.task_chunk 'auto' -> 1" in notes[0] and "up to float rounding" in notes[0]
    assert "solver.max_iter 10 -> 20 under the cosine schedule" in notes[1]
    state["settings"]["num_threads"] += 1
    assert "intra-op threads" in resume_notes(state, cfg, 4)[0]


def test_the_resume_note_on_a_stretched_cosine_schedule_gives_the_schedules_own_factors(tmp_path):
    """With ``solver.min_lr`` the schedule decays to a floor; the note's two factors are the ones
    the lr scheduler of each config computes at the resumed iteration."""
    from lil_meta.engine.defaults import build_lr_scheduler
    from lil_meta.engine.resume import resume_notes

    def cfg_for(max_iter):
        return make_cfg(**{"solver.lr_schedule": "cosine", "solver.max_iter": max_iter, "solver.lr": 1e-3,
                           "solver.min_lr": 4e-4})

    Checkpointer(tmp_path, cfg=cfg_for(10)).save("model_0000007", model=model_state())
    state = torch.load(tmp_path / "model_0000007.pth", weights_only=True)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    before, after = (build_lr_scheduler(cfg_for(n), optimizer).lr_lambdas[0](8) for n in (10, 20))
    assert before < 0.5 < after  # the floor (0.4) matters: without it ``before`` would be 0.1
    note = resume_notes(state, cfg_for(20), 8)[-1]
    assert f"goes from {before:.3g} to {after:.3g} x solver.lr" in note, note


def test_a_checkpoint_of_whole_batch_passes_resumes_under_auto_with_a_rounding_note(tmp_path):
    """A run saved with ``solver.task_chunk: 0`` (the default before ``auto``) resumes under
    ``auto``: the same config to the fingerprint, and a note that the sums are rounded otherwise."""
    from lil_meta.engine.resume import resume_notes

    Checkpointer(tmp_path, cfg=make_cfg(**{"solver.task_chunk": 0})).save("model_0000003", model=model_state())
    now = make_cfg()
    assert now.solver.task_chunk == "auto"
    state = Checkpointer(tmp_path, cfg=now).load(tmp_path / "model_0000003.pth")
    notes = resume_notes(state, now, 4)
    assert len(notes) == 1 and "solver.task_chunk 0 -> 'auto'" in notes[0] and "up to float rounding" in notes[0]
