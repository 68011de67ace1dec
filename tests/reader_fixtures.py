"""Tiny fixtures in each real dataset layout, built on the fly for the reader tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from lil_meta.datasets.cifar_fs import DEFAULT_SPLIT
from lil_meta.datasets.cub import DEFAULT_SPLIT as CUB_SPLIT
from lil_meta.datasets.fc100 import DEFAULT_SPLIT as FC100_SPLIT
from lil_meta.datasets.fgvc_aircraft import DEFAULT_SPLIT as AIRCRAFT_SPLIT

QUIET = {"progress": False}
RNG = np.random.default_rng(0)


def rand_images(n: int, size: int = 12) -> np.ndarray:
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def one_line(exc: BaseException) -> str:
    """The message, asserting it is one line that hides any pickle/PIL exception behind it."""
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return msg


# ---- fixtures ------------------------------------------------------------------------------

MINI_CLASSES = {"train": 4, "val": 2, "test": 3}


def make_mini_pickle(root: Path, per_class: int = 3, size: int = 12) -> dict:
    arrays = {}
    for split, k in MINI_CLASSES.items():
        images = rand_images(k * per_class, size)
        order = RNG.permutation(len(images))  # class rows interleaved in the file
        class_dict = {f"n{split}{c:02d}": sorted(order[c::k].tolist()) for c in range(k)}
        dump(root / f"mini-imagenet-cache-{split}.pkl", {"image_data": images, "class_dict": class_dict})
        arrays[split] = (images, class_dict)
    return arrays


def make_mini_csv(root: Path, per_class: int = 3, size: int = 12) -> dict:
    (root / "images").mkdir(parents=True)
    arrays = {}
    for split, k in MINI_CLASSES.items():
        lines, imgs = ["filename,label"], {}
        for c in range(k):
            for j in range(per_class):
                name = f"{split}{c}_{j}.png"
                imgs[name] = rand_images(1, size)[0]
                Image.fromarray(imgs[name]).save(root / "images" / name)
                lines.append(f"{name},n{split}{c:02d}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
        arrays[split] = imgs
    return arrays


CIFAR_NAMES = sorted(json.loads(DEFAULT_SPLIT.read_text())["train"]
                     + json.loads(DEFAULT_SPLIT.read_text())["val"]
                     + json.loads(DEFAULT_SPLIT.read_text())["test"])


# the 20 real CIFAR-100 superclasses, sorted; fixture fine class c (CIFAR_NAMES[c]) is put in
# superclass c // 5 (not the real grouping, which the readers read from the data)
COARSE_NAMES = sorted(n for split in ("train", "val", "test")
                      for n in json.loads(FC100_SPLIT.read_text())[split])


def make_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """cifar-100-python/{train,test,meta}: 3 tiny images per fine class (2 train, 1 test), with
    ``coarse_labels`` (fine class // 5) and the real ``coarse_label_names``."""
    folder = root / "cifar-100-python"
    all_x, all_y = [], []
    for part, per_class in (("train", 2), ("test", 1)):
        y = np.repeat(np.arange(100), per_class)
        y = y[RNG.permutation(len(y))]
        x = RNG.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        dump(folder / part, {"data": x, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()})
        all_x.append(x)
        all_y.append(y)
    dump(folder / "meta", {"fine_label_names": CIFAR_NAMES, "coarse_label_names": COARSE_NAMES})
    return np.concatenate(all_x), np.concatenate(all_y)


def make_omniglot(root: Path, chars=(("background", "Alpha", 3), ("evaluation", "Beta", 2),
                                     ("evaluation", "Gamma", 1)), per_char: int = 3) -> None:
    for folder, alphabet, n in chars:
        for c in range(n):
            d = root / f"images_{folder}" / alphabet / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            for j in range(per_char):
                img = np.full((20, 20), 255, dtype=np.uint8)  # white paper
                img[2 + c : 8 + c, 3 + j : 5 + j] = 0  # a black stroke, off-centre (rotations differ)
                Image.fromarray(img).convert("1").save(d / f"{c:04d}_{j:02d}.png")


def make_tiered(root: Path, layout: str, size: int = 12) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, k in (("train", 4), ("val", 2), ("test", 3)):
        specific = np.repeat(np.arange(10, 10 + k) * 3, 2)[::-1].copy()  # sparse ids, reversed
        images = rand_images(len(specific), size)
        names = [f"s{i}" for i in range(10 + 3 * k + 30)]
        dump(root / f"{split}_labels.pkl", {"label_specific": specific,
                                            "label_general": np.zeros_like(specific),
                                            "label_specific_str": names})
        if layout == "png-pickle":
            dump(root / f"{split}_images_png.pkl", [png_bytes(a) for a in images])
        else:
            np.savez(root / f"{split}_images.npz", images=images)
        out[split] = (images, specific)
    return out


# the 200 real CUB class folders ("001.Black_footed_Albatross" ...), in class-id (= sorted) order
CUB_NAMES = sorted(n for split in ("train", "val", "test")
                   for n in json.loads(CUB_SPLIT.read_text())[split])


def make_cub(root: Path, num_classes: int = 200, per_class: int = 1, size: int = 12) -> list[str]:
    """CUB_200_2011/ with the first ``num_classes`` real class folders (all 200 by default, so
    the shipped split applies) and ``per_class`` tiny images each; returns the folder names."""
    base = root / "CUB_200_2011"
    classes, images, labels = [], [], []
    for c, name in enumerate(CUB_NAMES[:num_classes]):
        classes.append(f"{c + 1} {name}")
        (base / "images" / name).mkdir(parents=True)
        for j in range(per_class):
            rel = f"{name}/{name[4:]}_{j}.jpg"
            Image.fromarray(rand_images(1, size)[0]).save(base / "images" / rel)
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {c + 1}")
    (base / "classes.txt").write_text("\n".join(classes) + "\n")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return [c.split()[1] for c in classes]


# the 100 FGVC-Aircraft variants of the shipped split, in the split file's order
AIRCRAFT_NAMES = [n for split in ("train", "val", "test")
                  for n in json.loads(AIRCRAFT_SPLIT.read_text())[split]]


def make_aircraft(root: Path, per_class: int = 2, size: int = 12) -> list[str]:
    """fgvc-aircraft-2013b/data/ with images/, variants.txt and images_variant_*.txt: every
    variant of the shipped split, ``per_class`` tiny images each, spread over the three lists."""
    base = root / "fgvc-aircraft-2013b" / "data"
    (base / "images").mkdir(parents=True)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    n = 0
    for variant in AIRCRAFT_NAMES:
        for j in range(per_class):
            n += 1
            image_id = f"{1000000 + n:07d}"
            Image.fromarray(rand_images(1, size)[0]).save(base / "images" / f"{image_id}.jpg")
            lists[("train", "val", "test")[(n + j) % 3]].append(f"{image_id} {variant}")
    (base / "variants.txt").write_text("\n".join(sorted(AIRCRAFT_NAMES)) + "\n")
    for part, lines in lists.items():
        (base / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    return AIRCRAFT_NAMES


# ---- published archives and a local server, for the --download tests --------------------------

def _tar(path: Path, base: Path, names: list[str]) -> bytes:
    import tarfile

    with tarfile.open(path, "w:gz") as t:
        for name in names:
            t.add(base / name, arcname=name)
    return path.read_bytes()


def _zip(path: Path, base: Path, folder: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for p in sorted((base / folder).rglob("*")):
            z.write(p, p.relative_to(base))
    return path.read_bytes()


def published_files(name: str, work: Path) -> dict[str, bytes]:
    """The files ``--download`` fetches for dataset ``name`` (by their published names), built
    from the tiny fixtures above in the layouts of the real archives and pickles."""
    src, out = work / f"{name}-src", work / f"{name}-files"
    src.mkdir(parents=True)
    out.mkdir()
    if name == "omniglot":
        make_omniglot(src)
        return {f"{f}.zip": _zip(out / f"{f}.zip", src, f)
                for f in ("images_background", "images_evaluation")}
    if name in ("cifar_fs", "fc100"):
        make_cifar(src)
        return {"cifar-100-python.tar.gz": _tar(out / "c.tgz", src, ["cifar-100-python"])}
    if name == "cub":
        make_cub(src, per_class=2)
        (src / "attributes.txt").write_text("1 has_bill_shape::curved\n")  # as in the release
        return {"CUB_200_2011.tgz": _tar(out / "c.tgz", src, ["CUB_200_2011", "attributes.txt"])}
    if name == "fgvc_aircraft":
        make_aircraft(src, per_class=2)
        return {"fgvc-aircraft-2013b.tar.gz": _tar(out / "a.tgz", src, ["fgvc-aircraft-2013b"])}
    if name == "mini_imagenet":
        make_mini_pickle(src)
        return {f"mini-imagenet-cache-{part}.pkl": (src / f"mini-imagenet-cache-{split}.pkl").read_bytes()
                for part, split in (("train", "train"), ("validation", "val"), ("test", "test"))}
    if name == "tiered_imagenet":
        make_tiered(src, "png-pickle")
        return {f"tiered-imagenet-{p.name}": p.read_bytes() for p in sorted(src.glob("*.pkl"))}
    raise KeyError(name)


def md5_of(data: bytes) -> str:
    import hashlib

    return "md5:" + hashlib.md5(data).hexdigest()


class FileServer:
    """An HTTP server on 127.0.0.1 (a thread; port chosen by the OS) serving ``files`` (name →
    bytes) at ``/<name>``. ``requests`` lists the paths asked for; a name in ``truncate`` is
    sent with its full Content-Length but only half its bytes, then the connection is closed."""

    def __init__(self, files: dict[str, bytes], truncate: tuple[str, ...] = ()) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files, self.truncate, self.requests = dict(files), set(truncate), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in server.truncate else body)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
