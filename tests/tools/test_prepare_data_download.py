"""End to end: ``tools/prepare_data.py NAME ROOT --download`` through a mirror on 127.0.0.1
(serving archives built from the reader fixtures in the published layouts), with --checksums,
then a short training run on the prepared data; and a second call fetches nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from lil_meta.datasets.download import DOWNLOADS
from lil_meta.tools.prepare_data import main as prepare_data
from lil_meta.tools.train_net import main as train_net
from reader_fixtures import FileServer, md5_of, published_files

# a few iterations of a narrow Conv4 on 16 px images: each run takes well under a second
CONFIG = """\
defaults:
  - lil_schema
  - _self_
algorithm: {{name: maml, inner_lr: 0.4, inner_steps: 1, inner_steps_test: 1, engine: loop}}
model: {{backbone: {{name: conv4, hidden: 4}}}}
data:
  name: {name}
  root: {root}
  way: 2
  shot: 1
  query: 1
  image_size: 16
  channels: {channels}
  args: {args}
solver: {{meta_batch: 1, lr: 0.003, max_iter: 2, checkpoint_period: 2, keep_checkpoints: 1}}
test: {{tasks: 2, val_tasks: 2, batch: 2, eval_period: 2}}
log: {{period: 1, tensorboard: false}}
seed: 0
device: cpu
"""

# dataset → (channels, reader arguments the tiny fixture needs)
DATASETS = {
    "omniglot": (1, {"num_train": 3, "num_val": 1}),
    "cifar_fs": (3, {}),
    "fc100": (3, {}),
    "cub": (3, {}),
    "mini_imagenet": (3, {}),
    "tiered_imagenet": (3, {}),
    "fgvc_aircraft": (3, {}),
}


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """No proxy between the tests and 127.0.0.1, no cluster mirror from the environment, one
    torch thread (these nets are too small to gain from more, and a shared machine makes extra
    threads wait), and the root logger as it was after the training runs (which set it up for
    their own output)."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "LIL_DATA_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_download_prepare_and_train(name, tmp_path, capsys):
    files = published_files(name, tmp_path / "published")
    checksums = tmp_path / "checksums.json"
    checksums.write_text(json.dumps({f: md5_of(b) for f, b in files.items()}))
    root = tmp_path / "data"
    channels, args = DATASETS[name]
    argv = [name, str(root), "--download", "--checksums", str(checksums), "--image-size", "16",
            "--no-progress", *(f"--arg={k}={v}" for k, v in args.items())]
    with FileServer(files) as server:
        assert prepare_data([*argv, "--mirror", server.url]) == 0, capsys.readouterr().err
        assert sorted(server.requests) == sorted(files)
        out = capsys.readouterr().out
        assert "verified" in out or "no published checksum" in out
        assert f"data.name={name} data.root={root} data.image_size=16" in out
        assert prepare_data([*argv, "--mirror", server.url]) == 0  # again: nothing fetched
        assert sorted(server.requests) == sorted(files)
    assert "preparing" not in capsys.readouterr().out  # and the cache is reused

    config = tmp_path / "run.yaml"
    config.write_text(CONFIG.format(name=name, root=root, channels=channels, args=json.dumps(args)))
    out_dir = tmp_path / "run"
    assert train_net(["--config-file", str(config), "--output-dir", str(out_dir)]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["iterations"] == 2 and results["test_tasks"] == 2
    # only the unpacked data, the cache and the verified downloads are left in ROOT
    stray = [p for p in root.glob(f"{DOWNLOADS}/*") if p.name.startswith(("tmp", ".unpack"))]
    assert stray == []
    assert not [p for p in Path(root).iterdir() if p.name.startswith((".", "tmp")) and
                p.name not in (DOWNLOADS, ".lil_cache")]
