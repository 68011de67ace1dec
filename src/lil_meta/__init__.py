"""LIL: gradient-based meta-learning with Linearity in the Inner Loop.

One importable package whose subpackages are this repository's top-level folders:
``lil_meta.engine``, ``lil_meta.models``, ``lil_meta.losses``, ``lil_meta.datasets`` and
``lil_meta.tools`` (and the configs as ``lil_meta/configs``). In a checkout they are relative
symlinks (``src/lil_meta/engine -> ../../engine``), which the wheel build follows and copies, so
the editable install and the wheel import the same names and nothing else: installing the
project claims no other top-level name, and it sits beside HuggingFace's ``datasets`` or any
other ``models`` package. ``CONFIGS`` is the folder of the experiment configs
(``load_config(CONFIGS / "maml_lil_5shot.yaml")``).
"""

from pathlib import Path

CONFIGS = (Path(__file__).parent / "configs").resolve()

__all__ = ["CONFIGS"]
