"""Where each benchmark's files are published, and the checksums they are verified against.

:data:`SOURCES` maps a dataset name to the files ``tools/prepare_data.py NAME ROOT --download``
fetches (:mod:`datasets.download` does the fetching). Each :class:`Remote` is one file: its
name (also its name on a mirror, ``MIRROR/<name>``), its public URLs in the order they are
tried, the published checksum when one is known, and, for a file that is not an archive, the
name the reader reads it under in ``ROOT``. Where each URL and checksum comes from is written
next to it; where no checksum is published, ``hash`` is None and ``--checksums`` can pin one.
:data:`NO_SOURCE` holds, for a dataset with no live public source, the one line that says so.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Remote", "SOURCES", "NO_SOURCE", "all_file_names"]


@dataclass(frozen=True)
class Remote:
    """One published file.

    Args:
        name: the file name, the same on every mirror.
        urls: its public URLs, tried in order (empty: no public source, mirrors only).
        hash: ``"md5:<hex>"`` or ``"sha256:<hex>"`` as published, or None when none is known.
        dest: for a plain file (not an archive), its path under ROOT as the reader reads it.
        size: its size in bytes when known (checked when no hash is).
    """

    name: str
    urls: tuple[str, ...]
    hash: str | None = None
    dest: str | None = None
    size: int | None = None


# Omniglot: the authors' repository (brendenlake/omniglot, python/); the MD5s are the ones
# torchvision's Omniglot dataset checks.
_OMNIGLOT = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"

# CIFAR-100, python version: Alex Krizhevsky's page at the University of Toronto; the MD5 is the
# one torchvision's CIFAR100 dataset checks.
_CIFAR100 = Remote("cifar-100-python.tar.gz",
                   ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                   "md5:eb9058c3a382ffc7106e4002c42a8d85")

# learn2learn's Zenodo record 7978538 (the URLs its MiniImagenet and TieredImagenet datasets
# fetch); Zenodo publishes no checksum that this project has seen, so none is checked.
_ZENODO_L2L = "https://zenodo.org/record/7978538/files/"

SOURCES: dict[str, tuple[Remote, ...]] = {
    "omniglot": (
        Remote("images_background.zip", (_OMNIGLOT + "images_background.zip",),
               "md5:68d2efa1b9178cc56df9314c21c6e718"),
        Remote("images_evaluation.zip", (_OMNIGLOT + "images_evaluation.zip",),
               "md5:6b91aef0f799c5bb55b94e3f2daec811"),
    ),
    "cifar_fs": (_CIFAR100,),
    "fc100": (_CIFAR100,),
    # CUB-200-2011: CaltechDATA record 65de6-vp158 (the old vision.caltech.edu address is gone),
    # then the copy learn2learn fetches (Zenodo record 8000562); the MD5 is the one other
    # loaders of the CaltechDATA file check.
    "cub": (
        Remote("CUB_200_2011.tgz",
               ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                "https://zenodo.org/record/8000562/files/CUB_200_2011.tgz"),
               "md5:97eceeb196236b17998738112f37df78"),
    ),
    "mini_imagenet": tuple(
        Remote(f"mini-imagenet-cache-{part}.pkl", (f"{_ZENODO_L2L}mini-imagenet-cache-{part}.pkl",),
               dest=f"mini-imagenet-cache-{split}.pkl")
        for part, split in (("train", "train"), ("validation", "val"), ("test", "test"))),
    "tiered_imagenet": tuple(
        Remote(f"tiered-imagenet-{split}_{kind}.pkl",
               (f"{_ZENODO_L2L}tiered-imagenet-{split}_{kind}.pkl",), dest=f"{split}_{kind}.pkl")
        for split in ("train", "val", "test") for kind in ("images_png", "labels")),
    # FGVC-Aircraft: the Oxford VGG page's archive. The page links an MD5 sum, but this project
    # has not seen its value, so none is checked (--checksums pins one).
    "fgvc_aircraft": (
        Remote("fgvc-aircraft-2013b.tar.gz",
               ("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/"
                "fgvc-aircraft-2013b.tar.gz",)),
    ),
    # Stanford Cars: no public source (below); a mirror that holds these two files works.
    "cars": (Remote("cars_train.tgz", ()), Remote("car_devkit.tgz", ())),
}

NO_SOURCE: dict[str, str] = {
    "cars": ("cars: Stanford Cars has no live download (its ai.stanford.edu/~jkrause/cars pages are "
             "gone and torchvision disabled its download, pytorch/vision#7545): get cars_train.tgz "
             "and car_devkit.tgz from a copy (that thread lists some) and unpack both into ROOT, or "
             "serve them from a mirror (--mirror URL); see docs/datasets.md"),
}


def all_file_names() -> set[str]:
    """Every file name some dataset fetches (the keys a ``--checksums`` file may hold)."""
    return {r.name for remotes in SOURCES.values() for r in remotes}
