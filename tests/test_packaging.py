"""The project installs as one package, ``lil_meta``, beside HuggingFace's ``datasets``.

A fresh virtual environment gets a real (non-editable) install of the project, built from this
checkout without network; its other dependencies, HuggingFace's ``datasets`` among them, are
seen through a ``.pth`` line to the test environment's site-packages. The README's Python API
snippet then runs from a folder outside the repository.
"""

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests_helpers import ROOT


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    pytest.importorskip("datasets", reason="HuggingFace datasets is a dev dependency (make install)")
    env = tmp_path_factory.mktemp("fresh-venv")
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (env / purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    source = tmp_path_factory.mktemp("source")  # a copy of the tracked files: the build writes there
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():  # lil_meta/engine -> ../engine and its siblings
            (source / name).symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--no-build-isolation", str(source)], capture_output=True, text=True, cwd=env)
    assert install.returncode == 0, install.stderr[-3000:]
    return python, env


def test_readme_api_runs_from_another_folder_beside_huggingface_datasets(fresh_env, tmp_path):
    python, env = fresh_env
    check = ("import datasets, lil_meta, lil_meta.datasets, importlib.util as u\n"
             "print('HF', hasattr(datasets, 'load_dataset'), datasets.__file__)\n"
             "print('LIL', lil_meta.__file__, lil_meta.datasets.__file__)\n"
             "print('TOP', [m for m in ('engine', 'models', 'losses', 'tools') if u.find_spec(m)])\n")
    proc = subprocess.run([python, "-c", check + readme_snippet()], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    hf, lil, top = lines[0].split(), lines[1].split(), lines[2]
    assert hf[1] == "True" and "site-packages" in hf[2] and hf[2] != str(ROOT / "datasets" / "__init__.py")
    assert all(path.startswith(str(env)) for path in lil[1:]), "lil_meta must come from the fresh install"
    assert top == "TOP []", "the install must not claim generic top-level names"
    for key in ("'loss'", "'loss_phase'", "'acc'", "'pc'", "'ac'", "'hess_ratio'"):
        assert key in lines[-1]


def test_readme_snippet_runs_in_this_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_snippet(), "README.md", "exec"), {})
    assert "'hess_ratio'" in capsys.readouterr().out


def test_no_file_cites_a_design_document_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    citing = [f for f in tracked if f.endswith((".py", ".md", ".yaml", ".toml", ".sh"))
              and "DESIGN" + ".md" in (ROOT / f).read_text(errors="ignore")]
    assert citing == []


def test_readme_is_a_short_read():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


# One import identity: every module is lil_meta.<...>, whichever way a process starts.
TOP_FOLDERS = ["engine", "models", "losses", "datasets", "tools"]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
ONE_ITERATION = ["solver.max_iter=1", "test.tasks=2", "test.val_tasks=2", "test.batch=2"]
# An extra_modules module that records which `datasets` a training process imports.
PROBE = """import json, os, datasets
with open(os.environ["HF_PROBE_OUT"], "w") as f:
    json.dump({"file": datasets.__file__, "load_dataset": hasattr(datasets, "load_dataset")}, f)
"""


def probe_env(tmp_path):
    """(env, record file) for a run whose config lists ``extra_modules=[hf_probe]``."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "hf_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "probe"), "HF_PROBE_OUT": str(tmp_path / "probe.json")}
    return env, tmp_path / "probe.json"


def assert_huggingface(record):
    seen = json.loads(record.read_text())
    folder = Path(seen["file"]).resolve().parent
    assert seen["load_dataset"] and "site-packages" in seen["file"], seen
    assert folder != (ROOT / "datasets").resolve() and folder.parent.name != "lil_meta", seen


def test_the_suite_imports_huggingface_datasets():
    datasets = pytest.importorskip("datasets", reason="HuggingFace datasets is a dev dependency")
    assert hasattr(datasets, "load_dataset"), datasets.__file__


def test_train_net_script_imports_huggingface_datasets_for_an_extra_module(tmp_path):
    pytest.importorskip("datasets", reason="HuggingFace datasets is a dev dependency")
    env, record = probe_env(tmp_path)
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(TINY),
           "--output-dir", str(tmp_path / "run"), "extra_modules=[hf_probe]", *ONE_ITERATION]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_huggingface(record)


BARE = """import importlib, sys
for name in sys.argv[1:]:
    try:
        bare = importlib.import_module(name)
    except ImportError as exc:
        print(name, "refused:", exc)
    else:
        print(name, "same" if bare is importlib.import_module("lil_meta." + name) else "copy")
"""


def test_a_top_level_folder_imported_by_its_bare_name_is_refused_or_the_same_module():
    proc = subprocess.run([sys.executable, "-c", BARE, *TOP_FOLDERS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, line in zip(TOP_FOLDERS, proc.stdout.splitlines(), strict=True):
        assert line == f"{name} same" or (line.startswith(f"{name} refused:") and f"lil_meta.{name}" in line), line


@pytest.mark.parametrize("name", ["lil_meta.lil_meta", "lil_meta.tests", "lil_meta.docs"])
def test_the_package_holds_only_its_subpackages(name):
    assert importlib.util.find_spec(name) is None


MERGE = """import sys
from lil_meta.engine.config import load_config
try:
    from engine.config import load_config as bare
except ImportError as exc:
    print("refused:", exc)
else:
    print("same" if bare is load_config else "copy")
    bare(sys.argv[1])
print(load_config(sys.argv[1]).algorithm.name)
"""


def test_a_bare_engine_import_beside_lil_meta_makes_no_second_copy(tmp_path):
    """With the root on the path (a script or notebook there), two copies of engine.config once
    made load_config fail with "Merge error: Config is not a subclass of Config"."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", MERGE, str(TINY)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, last = proc.stdout.splitlines()[0], proc.stdout.splitlines()[-1]
    assert first == "same" or (first.startswith("refused:") and "lil_meta.engine" in first), first
    assert last == "maml"


def test_the_installed_train_net_runs_as_a_module_beside_huggingface_datasets(fresh_env, tmp_path):
    python, env = fresh_env
    helped = subprocess.run([python, "-m", "lil_meta.tools.train_net", "--help"], capture_output=True,
                            text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "--config-file" in helped.stdout, helped.stderr[-3000:]
    run_env, record = probe_env(tmp_path)
    cmd = [python, "-m", "lil_meta.tools.train_net", "--config-file", str(TINY), "--output-dir",
           str(tmp_path / "run"), "extra_modules=[hf_probe]", *ONE_ITERATION]
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_huggingface(record)


def test_the_checker_resolves_every_import():
    """basedpyright with the project's venv ([tool.basedpyright] in pyproject.toml)."""
    checker = shutil.which("basedpyright", path=os.path.dirname(sys.executable))
    if checker is None:
        pytest.skip("basedpyright is a dev dependency (make install)")
    proc = subprocess.run([checker], cwd=ROOT, capture_output=True, text=True, timeout=300)
    unresolved = [line.strip() for line in proc.stdout.splitlines() if "could not be resolved" in line]
    assert unresolved == [], "\n".join(unresolved[:20])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
