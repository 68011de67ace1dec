"""The README's Python API snippet runs as written."""

import re

from tests_helpers import ROOT


def test_readme_python_snippet_runs(monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    for key in ("loss", "loss_ce", "acc", "acc_init", "pc", "ac", "traj_len", "task_acc"):
        assert f"'{key}'" in printed
