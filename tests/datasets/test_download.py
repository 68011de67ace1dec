"""datasets/download.py through ``tools/prepare_data.py --download``, against servers on
127.0.0.1 only: each fault is one ``error:`` line naming the URL or file, exit status 2 and
nothing half-written in ROOT; mirrors, --checksums, second sources, files already present."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lil_meta.datasets import remote
from lil_meta.datasets.download import DOWNLOADS, fetch
from lil_meta.datasets.remote import Remote
from lil_meta.engine.errors import DataError
from lil_meta.tools.prepare_data import main as prepare_data
from reader_fixtures import FileServer, md5_of, published_files


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "LIL_DATA_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    work = tmp_path_factory.mktemp("published")
    return {name: published_files(name, work) for name in ("omniglot", "cifar_fs", "mini_imagenet")}


def download(name, root, url, *extra) -> int:
    return prepare_data([name, str(root), "--download", "--mirror", url, "--no-progress",
                         "--retries", "0", *extra])


def one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def leftovers(root) -> list[str]:
    """Everything in ROOT, at any depth."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def pinned(tmp_path, files: dict[str, bytes]) -> str:
    path = tmp_path / "checksums.json"
    path.write_text(json.dumps({name: md5_of(data) for name, data in files.items()}))
    return str(path)


@contextlib.contextmanager
def write_limit(nbytes: int):
    """Writes past ``nbytes`` into any file fail (EFBIG), as they do on a full disk (ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# ---- faults --------------------------------------------------------------------------------

def test_http_404_names_the_url_and_is_not_retried(tmp_path, capsys):
    root = tmp_path / "data"
    with FileServer({}) as server:
        assert download("omniglot", root, server.url) == 2
    one_error(capsys, f"{server.url}/images_background.zip: HTTP 404")
    assert server.requests == ["images_background.zip"] and leftovers(root) == []


def test_refused_connection(tmp_path, capsys):
    root = tmp_path / "data"
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert download("cifar_fs", root, url) == 2
    one_error(capsys, f"{url}/cifar-100-python.tar.gz: cannot connect", "refused")
    assert leftovers(root) == []


def test_server_that_never_answers_times_out(tmp_path, capsys):
    root = tmp_path / "data"
    with socket.socket() as sock:  # listening, never accepting: the request gets no answer
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert download("cifar_fs", root, url, "--timeout", "0.2") == 2
    one_error(capsys, f"{url}/cifar-100-python.tar.gz: no answer within 0.2 s")
    assert leftovers(root) == []


def test_wrong_checksum_keeps_nothing(tmp_path, capsys, published):
    files = published["cifar_fs"]
    checksums = pinned(tmp_path, {"cifar-100-python.tar.gz": b"another file"})
    root = tmp_path / "data"
    with FileServer(files) as server:
        assert download("cifar_fs", root, server.url, "--checksums", checksums) == 2
    one_error(capsys, f"{server.url}/cifar-100-python.tar.gz: the checksum of the downloaded file is "
              f"{md5_of(files['cifar-100-python.tar.gz'])[4:]}, expected {md5_of(b'another file')}")
    assert leftovers(root) == []


def test_broken_transfer_leaves_nothing_and_the_next_call_restarts(tmp_path, capsys, published):
    files = published["mini_imagenet"]  # no published checksum: the Content-Length catches it
    root = tmp_path / "data"
    with FileServer(files, truncate=("mini-imagenet-cache-train.pkl",)) as server:
        assert download("mini_imagenet", root, server.url) == 2
    one_error(capsys, f"{server.url}/mini-imagenet-cache-train.pkl: the transfer broke off")
    assert leftovers(root) == []
    (root / DOWNLOADS).mkdir()
    (root / DOWNLOADS / "tmpk1ll3d").write_bytes(b"half a file")  # as a killed run leaves it
    with FileServer(files) as server:
        assert download("mini_imagenet", root, server.url) == 0
    for part, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        got = (root / f"mini-imagenet-cache-{split}.pkl").read_bytes()
        assert got == files[f"mini-imagenet-cache-{part}.pkl"]
    assert not (root / DOWNLOADS / "tmpk1ll3d").exists()
    assert "no published checksum; got sha256:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["cifar_fs", "omniglot"])
def test_corrupt_archive_is_removed_and_nothing_unpacked(name, tmp_path, capsys, published):
    files = {k: v[: len(v) // 2] for k, v in published[name].items()}  # cut, but as pinned
    root = tmp_path / "data"
    with FileServer(files) as server:
        assert download(name, root, server.url, "--checksums", pinned(tmp_path, files)) == 2
    first = sorted(files)[0]
    one_error(capsys, f"{root / DOWNLOADS / first}: cannot unpack", "truncated or corrupt and was removed")
    assert leftovers(root) == []


def test_full_disk_while_downloading(tmp_path, capsys, published):
    files = published["cifar_fs"]
    root = tmp_path / "data"
    with FileServer(files) as server, write_limit(64 << 10):
        code = download("cifar_fs", root, server.url)
    assert code == 2
    one_error(capsys, f"{root / DOWNLOADS}: cannot write the download of "
              f"{server.url}/cifar-100-python.tar.gz (File too large)")
    assert leftovers(root) == []


def test_full_disk_while_unpacking(tmp_path, capsys, published):
    files = published["cifar_fs"]
    root = tmp_path / "data"
    (root / DOWNLOADS).mkdir(parents=True)
    archive = root / DOWNLOADS / "cifar-100-python.tar.gz"
    archive.write_bytes(files["cifar-100-python.tar.gz"])  # already there: verified, not fetched
    with FileServer(files) as server, write_limit(64 << 10):
        code = download("cifar_fs", root, server.url, "--checksums", pinned(tmp_path, files))
    assert code == 2 and server.requests == []
    one_error(capsys, f"{root}: cannot unpack cifar-100-python.tar.gz (File too large)")
    assert leftovers(root) == [DOWNLOADS, f"{DOWNLOADS}/cifar-100-python.tar.gz"]  # kept: verified


@pytest.mark.parametrize("content, needle", [
    (None, "checksums file not found"),
    ("{not json", "cannot read the checksums"),
    ('["md5:00"]', "expected a JSON object"),
    ('{"images_background.zp": "md5:68d2efa1b9178cc56df9314c21c6e718"}',
     "'images_background.zp' is not a file any --download fetches"),
    ('{"images_background.zip": "crc:1234"}', "'images_background.zip': expected \"md5:"),
])
def test_bad_checksums_file_is_one_line(content, needle, tmp_path, capsys):
    path = tmp_path / "checksums.json"
    if content is not None:
        path.write_text(content)
    assert download("omniglot", tmp_path / "data", "http://127.0.0.1:9", "--checksums", str(path)) == 2
    one_error(capsys, str(path), needle)
    assert not (tmp_path / "data").exists()


def test_bad_mirror_and_a_dataset_without_a_source(tmp_path, capsys):
    assert download("cub", tmp_path / "a", "/shared/datasets") == 2
    one_error(capsys, "--mirror", "'/shared/datasets'", "python -m http.server")
    assert prepare_data(["cars", str(tmp_path / "b"), "--download"]) == 2
    one_error(capsys, "cars: Stanford Cars has no live download", "--mirror URL")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- mirrors, sources, files already present ---------------------------------------------------

def test_mirror_from_the_environment_and_second_call_fetches_nothing(tmp_path, monkeypatch, published):
    files = published["omniglot"]
    root, lines = tmp_path / "data", []
    with FileServer(files) as server:
        monkeypatch.setenv("LIL_DATA_MIRROR", server.url + "/")
        checksums = {k: md5_of(v) for k, v in files.items()}
        fetch("omniglot", root, checksums=checksums, say=lines.append)
        assert sorted(server.requests) == sorted(files)
        fetch("omniglot", root, checksums=checksums, say=lines.append)
        assert sorted(server.requests) == sorted(files)  # nothing fetched the second time
    assert (root / "images_background" / "Alpha").is_dir() and (root / "images_evaluation").is_dir()
    assert "images_evaluation.zip: already unpacked" in lines[-1]


def test_present_file_is_kept_when_it_matches_and_fetched_again_when_not(tmp_path, published):
    files = published["mini_imagenet"]
    checksums = {k: md5_of(v) for k, v in files.items()}
    root = tmp_path / "data"
    root.mkdir()
    (root / "mini-imagenet-cache-val.pkl").write_bytes(files["mini-imagenet-cache-validation.pkl"])
    (root / "mini-imagenet-cache-test.pkl").write_bytes(b"something else")
    with FileServer(files) as server:
        fetch("mini_imagenet", root, mirror=server.url, checksums=checksums, say=lambda _: None)
    assert sorted(server.requests) == ["mini-imagenet-cache-test.pkl", "mini-imagenet-cache-train.pkl"]
    assert (root / "mini-imagenet-cache-test.pkl").read_bytes() == files["mini-imagenet-cache-test.pkl"]


def test_second_source_is_tried_when_the_first_fails(tmp_path, monkeypatch, published):
    files = published["cifar_fs"]
    data = files["cifar-100-python.tar.gz"]
    with FileServer(files) as server:
        urls = (f"{server.url}/gone/cifar-100-python.tar.gz", f"{server.url}/cifar-100-python.tar.gz")
        monkeypatch.setitem(remote.SOURCES, "cifar_fs",
                            (Remote("cifar-100-python.tar.gz", urls, md5_of(data)),))
        fetch("cifar_fs", tmp_path / "ok", say=lambda _: None)
        assert server.requests == ["gone/cifar-100-python.tar.gz", "cifar-100-python.tar.gz"]
        monkeypatch.setitem(remote.SOURCES, "cifar_fs", (Remote("cifar-100-python.tar.gz", urls[:1] * 2),))
        with pytest.raises(DataError) as e:
            fetch("cifar_fs", tmp_path / "bad", retries=0, say=lambda _: None)
    assert (tmp_path / "ok" / "cifar-100-python" / "meta").is_file()
    assert str(e.value).count(f"{urls[0]}: HTTP 404") == 2 and "\n" not in str(e.value)


def test_mirror_serves_a_dataset_with_no_public_source(tmp_path):
    files = {}
    for name, member in (("cars_train.tgz", "cars_train/00001.jpg"),
                         ("car_devkit.tgz", "devkit/cars_meta.mat")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            info = tarfile.TarInfo(member)
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
        files[name] = buf.getvalue()
    lines = []
    with FileServer(files) as server:
        fetch("cars", tmp_path, mirror=server.url, say=lines.append)
    assert (tmp_path / "cars_train" / "00001.jpg").read_bytes() == b"abc"
    assert (tmp_path / "devkit" / "cars_meta.mat").is_file()
    assert sum("no published checksum" in line for line in lines) == 2


def test_command_line_with_the_mirror_from_the_environment(tmp_path, published):
    """As a user runs it: the mirror from $LIL_DATA_MIRROR, a fault as the only line on stderr."""
    script = Path(__file__).resolve().parents[2] / "tools" / "prepare_data.py"
    files = published["mini_imagenet"]
    root = tmp_path / "data"
    with FileServer({k: v for k, v in files.items() if "test" not in k}) as server:
        env = {**os.environ, "LIL_DATA_MIRROR": server.url, "no_proxy": "127.0.0.1"}
        proc = subprocess.run([sys.executable, str(script), "mini_imagenet", str(root), "--download"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {server.url}/mini-imagenet-cache-test.pkl: HTTP 404 Not Found\n"
    assert "mini-imagenet-cache-train.pkl: no published checksum" in proc.stdout
    assert sorted(p.name for p in root.iterdir()) == ["mini-imagenet-cache-train.pkl",
                                                      "mini-imagenet-cache-val.pkl"]
