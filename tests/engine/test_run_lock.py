"""The run folder's lock, atomic writes under signals and a full disk, stale temporary files."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

from lil_meta.engine.checkpoint import Checkpointer
from lil_meta.engine.errors import OutputError
from lil_meta.engine.fileio import atomic_write, remove_stale_temps
from lil_meta.engine.interrupt import Interrupted, signals_as_interrupt
from lil_meta.engine.run_lock import LOCK_NAME, RunLockedError, acquire
from tests_helpers import ROOT

HOLD = ("import sys; from lil_meta.engine.run_lock import acquire; lock = acquire(sys.argv[1]); "
        "lock.mark_owner(); print('held', flush=True); sys.stdin.read()")


def listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


def test_a_second_holder_is_refused_naming_folder_and_pid(tmp_path):
    out = tmp_path / "run"
    lock = acquire(out)
    lock.mark_owner()
    with pytest.raises(RunLockedError, match=rf"output folder {out} is in use by another run \(pid {os.getpid()}"):
        acquire(out)
    lock.release()
    acquire(out).release()


def test_a_refused_check_under_the_lock_leaves_nothing(tmp_path):
    fresh = tmp_path / "fresh"
    acquire(fresh).release(undo=True)
    assert not fresh.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.yaml").write_text("seed: 1\n")
    acquire(existing).release(undo=True)
    assert listing(existing) == ["config.yaml"]


def test_a_lock_held_by_another_process_blocks_until_it_dies(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}"):
            acquire(out)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock
        holder.wait()
    acquire(out).release()
    assert (out / LOCK_NAME).read_text().split()[0] == str(holder.pid)  # written by the dead holder


def test_an_interrupted_write_is_rolled_back(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def write(f):
        f.write(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b" never")

    with signals_as_interrupt(), pytest.raises(Interrupted):
        atomic_write(target, write)
    assert target.read_text() == "old" and listing(tmp_path) == ["results.json"]


def test_a_handler_someone_else_installed_is_kept():
    def theirs(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        with signals_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is theirs  # submitit's, under SLURM
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path)
    ck.save("model_0000001", model={"w": torch.zeros(2)})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"model_0000003\.pth: cannot write it: No space left on device"):
        ck.save("model_0000003", model={"w": torch.ones(2)})
    assert listing(tmp_path) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_stale_temporary_files_are_removed(tmp_path):
    dead = int(open("/proc/sys/kernel/pid_max").read()) + 1  # above any pid the kernel hands out
    stale = tmp_path / f".model_0000003.pth.{dead}.0123abcd.tmp"
    live = tmp_path / f".results.json.{os.getppid()}.0123abcd.tmp"
    other = tmp_path / ".notes.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert remove_stale_temps(tmp_path, owned=True) == [live]
    assert listing(tmp_path) == [".notes.tmp"]
