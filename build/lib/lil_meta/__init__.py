"""LIL: gradient-based meta-learning with Linearity in the Inner Loop.

One importable package whose subpackages are this repository's top-level folders:
``lil_meta.engine``, ``lil_meta.models``, ``lil_meta.losses``, ``lil_meta.datasets`` and
``lil_meta.tools``. Installing the project claims no other top-level name, so it sits beside
HuggingFace's ``datasets`` or any other ``models`` package. ``CONFIGS`` is the folder of the
experiment configs (``load_config(CONFIGS / "maml_lil_5shot.yaml")``).
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
# In a source checkout the subpackages are the sibling folders of this one (an installed wheel
# holds them inside it): found through this package's path, installed or not.
if not (_HERE / "engine").is_dir() and (_HERE.parent / "engine" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))  # noqa: F821  (the package's own __path__)

CONFIGS = _HERE / "configs" if (_HERE / "configs").is_dir() else _HERE.parent / "configs"

__all__ = ["CONFIGS"]
