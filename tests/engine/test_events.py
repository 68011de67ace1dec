"""engine/events.py: the EventStorage keeps metrics as tensors until a reader asks, reads them in
one transfer, and drops the values of a step whose validity flag is false."""

from __future__ import annotations

import torch

from lil_meta.engine.events import EventStorage


def test_storage_window_means():
    s = EventStorage()
    for it, v in enumerate([1.0, 2.0, 3.0, 4.0]):
        s.iter = it
        s.put_scalars(loss=v)
    s.put_scalar("val/acc", 50.0)
    assert s.window_means(2) == {"loss": 3.5, "val/acc": 50.0}
    assert s.latest()["loss"] == (3, 4.0)


def test_storage_drops_values_whose_flag_is_false_and_reads_them_together():
    storage = EventStorage()
    for it, ok in enumerate([True, False, True]):
        storage.iter = it
        storage.put_scalars(valid=torch.tensor(ok), loss=torch.tensor(float(it)), time=0.5)
    storage.put_scalar("val/acc", 40.0)
    assert storage.history("loss") == [(0, 0.0), (2, 2.0)]
    assert storage.history("time") == [(0, 0.5), (2, 0.5)]
    assert storage.latest()["val/acc"] == (2, 40.0)
