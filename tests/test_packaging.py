"""The project installs as one package, ``lil_meta``, beside HuggingFace's ``datasets``.

A fresh virtual environment gets a real (non-editable) install of the project, built from this
checkout without network; its other dependencies, HuggingFace's ``datasets`` among them, are
seen through a ``.pth`` line to the test environment's site-packages. The README's Python API
snippet then runs from a folder outside the repository.
"""

import re
import shutil
import site
import subprocess
import sys
import venv

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
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
