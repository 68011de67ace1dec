"""The layers of the package (docs/design.md §2): every import, function-level ones included,
goes from a layer to itself or one below, and no modules import each other in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"engine": "lil_meta.engine", "models": "lil_meta.models", "losses": "lil_meta.losses",
           "datasets": "lil_meta.datasets", "tools": "lil_meta.tools"}
# bottom to top; a module belongs to the layer of its longest matching prefix
LAYERS = [
    ("ground", ["lil_meta.engine.errors", "lil_meta.engine.registry", "lil_meta.engine.fileio",
                "lil_meta.engine.events", "lil_meta.engine.rng", "lil_meta.engine.run_lock",
                "lil_meta.engine.interrupt", "lil_meta.engine.launch", "lil_meta.engine.cpu_memory",
                "lil_meta.engine.precision"]),
    ("config", ["lil_meta.engine.config", "lil_meta.engine.config_values", "lil_meta.engine.components"]),
    ("inner-loop maths", ["lil_meta.engine.inner_loop", "lil_meta.engine.adapted_task", "lil_meta.engine.kernels"]),
    ("components", ["lil_meta.datasets", "lil_meta.losses", "lil_meta.models"]),
    ("engine top", ["lil_meta.engine"]),  # every other module of engine/
    ("entry points", ["lil_meta.tools"]),
]
GROUND_PACKAGE = "lil_meta.engine"  # its __init__ imports nothing: it sits in the ground


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> int:
    if module == GROUND_PACKAGE:
        return 0
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, module
    return rank


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the package ``module`` imports, at any depth of its code."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        found |= {n for n in names if n in known}
    return found - {module}


def test_every_import_goes_to_the_same_layer_or_below_and_none_is_circular():
    known = modules()
    graph = {m: imports(m, p, known) for m, p in known.items()}
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
              for m, targets in graph.items() for t in sorted(targets) if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)
    # circles: a module that reaches itself
    for start in graph:
        seen, stack = set(), list(graph[start])
        while stack:
            m = stack.pop()
            assert m != start, f"{start} imports itself through other modules"
            if m not in seen:
                seen.add(m)
                stack.extend(graph[m])


def test_the_walk_sees_function_level_imports():
    known = modules()
    # group_norms imports its Triton path inside a function (Triton only where it is used)
    kernels = imports("lil_meta.engine.kernels.group_norms", known["lil_meta.engine.kernels.group_norms"], known)
    assert kernels == {"lil_meta.engine.kernels.triton_group_norms"}
    assert "lil_meta.models" in imports("lil_meta.engine.build", known["lil_meta.engine.build"], known)
    assert layer("lil_meta.engine.trainer") > layer("lil_meta.models") > layer("lil_meta.engine.inner_loop")
    assert layer("lil_meta.engine.kernels.group_norms") == 2 and layer("lil_meta.engine.registry") == 0


def loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_trainer_and_the_registry_stand_alone():
    """The trainer knows no meta-learning: importing it loads no model, dataset, loss or Hydra."""
    for statement in ("import lil_meta.engine.trainer", "import lil_meta.engine.registry"):
        loaded = loaded_by(statement)
        components = sorted(m for m in loaded if m.startswith(("lil_meta.models", "lil_meta.datasets",
                                                                 "lil_meta.losses", "hydra", "omegaconf")))
        assert not components, f"{statement} loads {components}"
    assert "lil_meta.models" in loaded_by("import lil_meta.engine.runner")  # the check can see a load
