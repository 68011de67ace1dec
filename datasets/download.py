"""Fetch a benchmark's published files, verify them and unpack them where its reader looks.

:func:`fetch` is ``tools/prepare_data.py NAME ROOT --download``. The files and checksums come
from :data:`datasets.remote.SOURCES`; the fetching is pooch's (hash check, retries, a temporary
name until the file is verified), with a downloader that gives up at once on an HTTP 4xx and
an HTTP timeout the caller chooses. Everything is downloaded into ``ROOT/.lil_downloads/``:

- an archive is kept there and unpacked into a scratch folder next to it, whose top-level
  entries are then moved into ROOT (a rename: an entry is either all there or absent); a
  marker ``<archive>.unpacked`` written last records the archive's hash and entries, so a
  later call neither fetches nor unpacks it again;
- a plain file (the ImageNet pickles) is moved to the name its reader reads in ROOT once it
  is verified.

A file already present with the right hash (or, with no known hash, present at all) is not
fetched again. ``mirror`` (or ``$LIL_DATA_MIRROR``) replaces every public URL by
``MIRROR/<file name>``; ``checksums`` (file name → ``"md5:…"``/``"sha256:…"``) replaces the
published hashes. Each fault (HTTP error, refused connection, timeout, wrong checksum, broken
transfer, corrupt archive, a write the disk refuses) is one :class:`DataError` line naming the
URL or file; temporary files are removed, and those of a killed run are removed by the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from lil_meta.datasets.remote import NO_SOURCE, SOURCES, Remote, all_file_names
from lil_meta.engine.errors import DataError, UserInputError
from lil_meta.engine.fileio import atomic_write

__all__ = ["fetch", "load_checksums", "DOWNLOADS", "MIRROR_ENV"]

DOWNLOADS = ".lil_downloads"
MIRROR_ENV = "LIL_DATA_MIRROR"
_HASH = re.compile(r"(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})")


class _Refused(Exception):
    """An answer no retry changes (HTTP 4xx); not a requests error, so pooch does not retry."""


def load_checksums(path: str | os.PathLike) -> dict[str, str]:
    """The ``--checksums`` JSON: file name → ``"md5:<hex>"`` or ``"sha256:<hex>"``; any other
    content is one :class:`DataError` line naming the file and the key."""
    what = 'a JSON object from file name to "md5:<hex>" or "sha256:<hex>"'
    try:
        spec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: checksums file not found; expected {what}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the checksums ({exc}); expected {what}") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path}: expected {what}, got {type(spec).__name__}")
    known = all_file_names()
    out = {}
    for name, value in spec.items():
        if name not in known:
            raise DataError(f"{path}: '{name}' is not a file any --download fetches (the file "
                            f"names are listed in docs/datasets.md)")
        if not isinstance(value, str) or not _HASH.fullmatch(value.strip().lower()):
            raise DataError(f"{path}: '{name}': expected \"md5:<32 hex digits>\" or "
                            f"\"sha256:<64 hex digits>\", got {value!r}")
        out[name] = value.strip().lower()
    return out


def fetch(name: str, root: str | os.PathLike, *, mirror: str | None = None,
          checksums: Mapping[str, str] | None = None, timeout: float = 60.0, retries: int = 2,
          progress: bool = False, say: Callable[[str], None] = print) -> None:
    """Fetch, verify and unpack dataset ``name``'s files into ``root`` (module docstring)."""
    if name not in SOURCES:
        raise UserInputError(f"{name}: no download for this dataset (datasets with one: "
                             f"{', '.join(sorted(SOURCES))})")
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror is None and name in NO_SOURCE:
        raise DataError(NO_SOURCE[name])
    if mirror is not None and not re.match(r"https?://", mirror):
        raise UserInputError(f"--mirror / ${MIRROR_ENV}: expected an http:// or https:// URL, got "
                             f"{mirror!r} (a folder can be served with python -m http.server)")
    if not timeout > 0 or int(retries) != retries or retries < 0:
        raise UserInputError(f"--timeout must be > 0 and --retries an integer >= 0, got "
                             f"{timeout!r} and {retries!r}")
    root = Path(root).expanduser()
    store = root / DOWNLOADS
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # ROOT is a file, or not writable
        raise DataError(f"{store}: cannot create the download folder ({exc.strerror})") from None
    fetcher = _Fetcher(store, timeout, int(retries), progress, say)
    with _locked(store):
        _remove_leftovers(store)
        for remote in SOURCES[name]:
            expected = (checksums or {}).get(remote.name, remote.hash)
            urls = (f"{mirror.rstrip('/')}/{remote.name}",) if mirror else remote.urls
            if remote.dest is not None:
                fetcher.plain_file(remote, urls, expected, root / remote.dest)
            else:
                fetcher.archive(remote, urls, expected, root)


class _Fetcher:
    def __init__(self, store: Path, timeout: float, retries: int, progress: bool,
                 say: Callable[[str], None]) -> None:
        self.store, self.timeout, self.retries, self.progress, self.say = (
            store, timeout, retries, progress, say)

    def plain_file(self, remote: Remote, urls, expected: str | None, target: Path) -> None:
        if target.is_file():
            if self._matches(target, expected, remote.size):
                self.say(f"{target.name}: present ({_how(expected)}); not fetched")
                return
            self.say(f"{target}: does not match {expected or f'{remote.size} bytes'}; fetching it again")
        path = self.download(remote, urls, expected)
        try:
            os.replace(path, target)
        except OSError as exc:
            raise DataError(f"{target}: cannot move the download into place ({exc.strerror})") from None

    def archive(self, remote: Remote, urls, expected: str | None, root: Path) -> None:
        marker = self.store / f"{remote.name}.unpacked"
        done = _read_marker(marker)
        if done and (expected is None or done.get("hash") == expected) and all(
                (root / e).exists() for e in done.get("entries", ())):
            self.say(f"{remote.name}: already unpacked in {root} ({_how(expected)}); not fetched")
            return
        path = self.download(remote, urls, expected)
        entries = _unpack(path, root, self.store, self.say)
        record = expected or f"sha256:{_digest(path, 'sha256')}"
        try:
            atomic_write(marker, json.dumps({"hash": record, "entries": entries}) + "\n")
        except OSError as exc:
            raise DataError(f"{marker}: cannot record the unpacked archive ({exc.strerror}); "
                            f"its entries are in {root}; the next run records it again") from None

    def download(self, remote: Remote, urls, expected: str | None) -> Path:
        """``remote`` in the store, verified: the file already there if it matches, else
        fetched from the first of ``urls`` that serves a matching one."""
        path = self.store / remote.name
        if path.is_file() and self._matches(path, expected, remote.size):
            return path
        import pooch

        pooch.get_logger().setLevel("WARNING")
        failures = []
        for url in urls:
            self.say(f"{remote.name}: fetching {url}")
            getter = pooch.create(path=self.store, base_url="", registry={remote.name: expected},
                                  urls={remote.name: url}, retry_if_failed=self.retries)
            try:
                getter.fetch(remote.name, downloader=self._downloader())
            except Exception as exc:  # one line per URL; a write the disk refuses ends here
                failures.append(self._reason(url, exc))
                continue
            _usual_mode(path)
            if remote.size is not None and path.stat().st_size != remote.size:
                failures.append(f"{url}: served {path.stat().st_size} bytes, expected {remote.size}")
                path.unlink()
                continue
            if expected is None:
                self.say(f"{remote.name}: no published checksum; got sha256:"
                         f"{_digest(path, 'sha256')} (pin it with --checksums)")
            else:
                self.say(f"{remote.name}: {_how(expected)}")
            return path
        raise DataError("; ".join(failures) or f"{remote.name}: no URL to fetch it from")

    def _downloader(self):
        import pooch
        import requests

        http = pooch.HTTPDownloader(progressbar=self.progress, chunk_size=1 << 20,
                                    timeout=self.timeout)

        def download(url: str, output_file, getter) -> None:
            try:
                http(url, output_file, getter)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if 400 <= status < 500 and status not in (408, 429):
                    raise _Refused(f"HTTP {status} {exc.response.reason or ''}".strip()) from None
                raise

        return download

    def _reason(self, url: str, exc: Exception) -> str:
        import requests

        if isinstance(exc, _Refused):
            return f"{url}: {exc}"
        if isinstance(exc, requests.Timeout):
            return f"{url}: no answer within {self.timeout:g} s (--timeout)"
        if isinstance(exc, requests.ConnectionError):
            errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
            return f"{url}: cannot connect ({errno.group(0) if errno else type(exc).__name__})"
        if isinstance(exc, requests.RequestException):
            return f"{url}: the transfer broke off ({type(exc).__name__}); run again to restart it"
        if isinstance(exc, ValueError) and "hash" in str(exc):
            got = re.search(r"expected (\S+) but got (\S+?)\.?\s", str(exc))
            detail = f"is {got.group(2)}, expected {got.group(1)}" if got else "does not match"
            return (f"{url}: the checksum of the downloaded file {detail}; nothing was kept "
                    f"(a corrupt transfer or a changed file; --checksums pins another)")
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DataError(f"{self.store}: cannot write the download of {url} "
                            f"({exc.strerror})") from None
        return f"{url}: {type(exc).__name__}: {exc}"

    @staticmethod
    def _matches(path: Path, expected: str | None, size: int | None) -> bool:
        if size is not None and path.stat().st_size != size:
            return False
        if expected is None:
            return True
        alg, _, want = expected.partition(":")
        return _digest(path, alg) == want


def _usual_mode(path: Path) -> None:
    """Give a download the permissions of a file written normally (pooch's temporary files are
    private to their owner)."""
    umask = os.umask(0o022)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


def _how(expected: str | None) -> str:
    return f"{expected.partition(':')[0]} verified" if expected else "no published checksum"


def _digest(path: Path, alg: str) -> str:
    import pooch

    return pooch.file_hash(str(path), alg=alg)


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _unpack(archive: Path, root: Path, store: Path, say: Callable[[str], None]) -> list[str]:
    """Unpack ``archive`` into a scratch folder of ``store``, then move its top-level entries
    into ``root`` (an entry already there is kept as it is); the names of the entries."""
    scratch = store / f".unpack-{archive.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.mkdir()
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(scratch)
        else:
            with tarfile.open(archive) as t:
                if hasattr(tarfile, "data_filter"):
                    t.extractall(scratch, filter="data")
                else:  # pragma: no cover - Python before 3.10.12 (no extraction filters)
                    t.extractall(scratch, members=[m for m in t if _safe_member(m)])
        entries = sorted(p.name for p in scratch.iterdir())
        for entry in entries:
            if (root / entry).exists():
                say(f"{root / entry}: already there; kept as it is")
            else:
                os.replace(scratch / entry, root / entry)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DataError(f"{root}: cannot unpack {archive.name} ({exc.strerror}); nothing "
                            f"was moved into place") from None
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive}: cannot unpack ({type(exc).__name__}: {exc}); the archive is "
                        f"truncated or corrupt and was removed, so the next run fetches it "
                        f"again") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say(f"{archive.name}: unpacked {', '.join(entries)} into {root}")
    return entries


def _safe_member(member: tarfile.TarInfo) -> bool:
    parts = Path(member.name).parts
    return (member.isfile() or member.isdir()) and not member.name.startswith("/") and ".." not in parts


def _remove_leftovers(store: Path) -> None:
    """Remove what a killed run left in ``store``: pooch's temporary files and scratch folders."""
    for path in store.iterdir():
        if path.name.startswith(".unpack-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith("tmp") and path.is_file():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``store`` (where the OS has flock), so that two
    downloads into one ROOT do not remove each other's temporary files; an empty ``store`` is
    removed afterwards, so a call that fetched nothing leaves ROOT as it was."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    fd = os.open(store, os.O_RDONLY) if fcntl is not None else None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DataError(f"{store}: another download into this folder is running; wait "
                                f"for it to end") from None
        yield
    finally:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            store.rmdir()
