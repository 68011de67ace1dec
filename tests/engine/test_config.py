from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from engine.config import import_extra_modules, load_config, save_config
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MAML = ROOT / "configs" / "maml_5shot.yaml"


def test_composes_base_and_overrides():
    cfg = load_config(MAML, ["solver.lr=0.01", "data.way=3", "+algorithm.extra=2"])
    assert cfg.algorithm.name == "maml"
    assert cfg.solver.lr == 0.01 and cfg.data.way == 3 and cfg.algorithm.extra == 2
    assert cfg.test.tasks == 600  # from the schema's defaults
    assert cfg.output_dir == "output/maml_5shot"


def test_typo_names_key_and_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'solver.lr_inner'; did you mean 'solver.lr'\?"):
        load_config(MAML, ["solver.lr_inner=0.1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"bad value for 'solver.max_iter'.*'abc'"):
        load_config(MAML, ["solver.max_iter=abc"])


def test_typo_inside_yaml_file(tmp_path):
    (tmp_path / "base.yaml").write_text((ROOT / "configs" / "base.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("defaults:\n  - base\n  - _self_\ndata:\n  shots: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'data.shots'; did you mean 'data.shot'\?"):
        load_config(tmp_path / "bad.yaml")


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_saved_config_round_trips_and_is_read_only(tmp_path):
    cfg = load_config(MAML, ["seed=5"])
    path = save_config(cfg, tmp_path)
    assert OmegaConf.load(path) == cfg
    with pytest.raises(ReadonlyConfigError):
        cfg.seed = 6


def test_extra_modules_import_error_is_a_config_error():
    cfg = load_config(MAML, ["extra_modules=[no_such_module_xyz]"])
    with pytest.raises(ConfigError, match="extra_modules: cannot import 'no_such_module_xyz'"):
        import_extra_modules(cfg)


def test_extra_modules_are_the_logged_way_user_code_enters(caplog):
    cfg = load_config(MAML, ["extra_modules=[json]"])
    with caplog.at_level("INFO"):
        import_extra_modules(cfg)
    assert "imported extra module json" in caplog.text


def test_checkpoints_cannot_run_code(tmp_path):
    """A pickle that would call a function on load is refused (weights_only), not executed."""
    import os

    from engine.checkpoint import Checkpointer

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth: cannot read checkpoint"):
        Checkpointer(tmp_path).load(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("text, pattern", [
    ("seed: [1\n", r"base\.yaml: invalid YAML at line 2, column 1: .*flow sequence at line 1, column 7"),
    ("seed: !!python/object/apply:os.system ['true']\n", r"base\.yaml: YAML tag '!!python/object/apply:os\.system' "
                                                          r"at line 1, column 7 is not allowed"),
    ("seed: 1\nseed: 2\n", r"base\.yaml: invalid YAML at line 2, column 1: found duplicate key seed"),
])
def test_a_bad_file_in_the_defaults_list_is_named(tmp_path, text, pattern):
    (tmp_path / "base.yaml").write_text(text)
    (tmp_path / "run.yaml").write_text("defaults:\n  - lil_schema\n  - base\n  - _self_\nsolver:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=pattern):
        load_config(tmp_path / "run.yaml")


def test_an_unreadable_file_is_a_config_error(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match=r"run\.yaml: cannot read config file \(Permission denied\)$"):
        load_config(path)
