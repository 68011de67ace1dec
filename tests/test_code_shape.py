"""The shape the code keeps (docs/design.md §2): short files, constructors a reader can hold in
mind, and no function on a training step's path that takes more than six positional values."""

from __future__ import annotations

import ast
import inspect
import subprocess
from pathlib import Path

from lil_meta.models.algorithms.base import GBML

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
MAX_POSITIONAL = 6
# the modules a training step passes through (docs/design.md §3)
STEP_TRACE = [
    "tools/train_net.py", "engine/runner.py", "engine/build.py", "engine/run_folder.py", "engine/trainer.py",
    "engine/task_chunks.py", "engine/step_check.py", "engine/events.py", "engine/prefetch.py", "engine/launch.py",
    "engine/hooks.py", "engine/evaluation.py", "engine/inner_loop.py", "engine/adapted_task.py",
    "engine/kernels/group_norms.py",
    "engine/kernels/triton_group_norms.py", "datasets/sampler.py", "datasets/task_batch.py",
    "models/algorithms/base.py", "models/algorithms/head_features.py", "models/algorithms/inner_lr.py",
    "models/algorithms/metrics.py", "models/algorithms/chain.py", "models/algorithms/lil_pretrain.py",
    "models/backbones/conv4.py", "models/backbones/resnet12.py", "models/backbones/layers.py",
    "models/backbones/task_conv.py", "losses/base.py", "losses/cross_entropy.py", "losses/phase.py",
    "losses/pseudo_amplitude.py", "losses/shot.py", "losses/shot_one_step.py", "losses/lil_pretrain.py",
]
# signatures another API fixes: a Triton kernel's launch arguments, and the staticmethods of a
# torch.autograd.Function, which mirror its apply's inputs
FIXED_BY_API = ("triton.jit",)
FUNCTION_METHODS = {"forward", "backward", "jvp", "vmap", "setup_context"}


def test_no_python_file_is_over_400_lines():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    long = {f: n for f in files if (n := len((ROOT / f).read_text().splitlines())) > MAX_LINES}
    assert files and not long, long


def test_gbml_takes_at_most_ten_parameters_and_only_the_network_by_position():
    params = list(inspect.signature(GBML.__init__).parameters.values())[1:]
    assert len(params) <= 10, [p.name for p in params]
    assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == ["model"]


def _positional_overload(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    tree = ast.parse(path.read_text())
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        autograd = any(ast.unparse(b).endswith("autograd.Function") for b in cls.bases)
        for fn in cls.body:
            if autograd and isinstance(fn, ast.FunctionDef) and fn.name in FUNCTION_METHODS:
                fn.exempt = True  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            if getattr(node, "exempt", False) or any(ast.unparse(d) in FIXED_BY_API for d in node.decorator_list):
                continue
            names = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls", "ctx")]
            if len(names) > MAX_POSITIONAL:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}({', '.join(names)})")
        if isinstance(node, ast.ClassDef):
            decorators = [ast.unparse(d) for d in node.decorator_list]
            record = any(d.startswith(("dataclass", "dataclasses.dataclass")) for d in decorators) and not any(
                "kw_only=True" in d for d in decorators)
            record |= any(ast.unparse(b) == "NamedTuple" for b in node.bases)
            fields = [n for n in node.body if isinstance(n, ast.AnnAssign)]
            if record and len(fields) > MAX_POSITIONAL:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({len(fields)} positional fields)")
    return found


def test_nothing_on_the_steps_path_takes_more_than_six_positional_values():
    overloaded = [line for f in STEP_TRACE for line in _positional_overload(ROOT / f)]
    assert not overloaded, "\n".join(overloaded)


def test_the_check_sees_an_overloaded_signature(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f(a, b, c, d, e, f, g):\n    return a\n\n\n@dataclass\nclass R:\n"
                    + "".join(f"    x{i}: int\n" for i in range(7)))
    assert _positional_overload(path, tmp_path) == ["probe.py:1 f(a, b, c, d, e, f, g)",
                                                    "probe.py:6 R (7 positional fields)"]
