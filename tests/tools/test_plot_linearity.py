import json
import subprocess
import sys

from tests_helpers import ROOT


def write_run(folder, rows):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_writes_png_with_one_curve_per_run(tmp_path):
    write_run(tmp_path / "a", [{"iter": 20, "pc": 1.5, "ac": 0.8}, {"iter": 40, "pc": 1.2, "ac": 0.9}])
    write_run(tmp_path / "b", [{"iter": 20, "pc": 1.1}, {"iter": 40, "pc": 1.05, "ac": 0.95}])
    out = tmp_path / "fig" / "lin.png"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_linearity.py"), str(tmp_path / "a"),
                           str(tmp_path / "b"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_run_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_linearity.py"), str(tmp_path / "nope"),
                           "-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "metrics.jsonl: not found" in proc.stderr
    assert not (tmp_path / "x.png").exists()
