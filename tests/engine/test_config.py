from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from lil_meta.engine.config import import_extra_modules, load_config, save_config
from lil_meta.engine.errors import ConfigError

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

    from lil_meta.engine.checkpoint import Checkpointer

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


def test_an_infinite_huge_or_mistagged_yaml_is_one_config_error(tmp_path):
    """Aliases can make a short file infinite or exponentially large; deep nesting overflows the
    parser. Each is refused before the config system expands it."""
    cases = {
        "loop.yaml": ("x: &a [*a]\n", r"loop\.yaml: config file has a YAML alias that contains itself"),
        "bomb.yaml": ("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
                      + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)),
                      r"bomb\.yaml: config file expands to over 100000 values"),
        "deep.yaml": ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"deep\.yaml: config file is nested too deeply"),
        "tagged.yaml": ("seed: !!int x\n", r"tagged\.yaml: a value does not fit its YAML tag \(invalid literal"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=pattern):
            load_config(tmp_path / name)
    shared = tmp_path / "shared.yaml"  # an alias used twice is fine
    shared.write_text("defaults:\n  - lil_schema\n  - _self_\nlr: &lr 0.25\nsolver:\n  lr: *lr\n"
                      "algorithm:\n  inner_lr: *lr\n")
    with pytest.raises(ConfigError, match="unknown config key 'lr'"):
        load_config(shared)  # composes past the alias check, to the schema
    (tmp_path / "base.yaml").write_text("x: &a [*a]\n")
    (tmp_path / "run.yaml").write_text("defaults:\n  - lil_schema\n  - base\n  - _self_\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: cannot compose the files it includes \(one of them is infinite"):
        load_config(tmp_path / "run.yaml")


def test_an_unreadable_file_is_a_config_error(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match=r"run\.yaml: cannot read config file \(Permission denied\)$"):
        load_config(path)


def test_component_arguments_are_plain_keys():
    cfg = load_config(MAML, ["model.backbone.hidden=32", "algorithm.rates.mode=per_element",
                             "algorithm.rates.learn=true", "algorithm.execution.precompute_features=false"])
    assert cfg.model.backbone.hidden == 32
    assert cfg.algorithm.rates.mode == "per_element" and cfg.algorithm.rates.learn is True
    assert cfg.algorithm.execution.precompute_features is False
    cfg = load_config(MAML, ["model.backbone.name=resnet12", "model.backbone.widths=[8,8,16,16]",
                             "model.backbone.drop_block=0.1", "pretrain.algorithm.momentum=0.5"])
    assert list(cfg.model.backbone.widths) == [8, 8, 16, 16] and cfg.model.backbone.drop_block == 0.1
    assert "hidden" not in cfg.model.backbone  # the defaults of the backbone the config names
    assert cfg.pretrain.algorithm.momentum == 0.5


def test_the_plus_form_still_adds_an_argument():
    cfg = load_config(MAML, ["+model.backbone.hidden=16", "+algorithm.rates.mode=per_tensor"])
    assert cfg.model.backbone.hidden == 16 and cfg.algorithm.rates.mode == "per_tensor"


def test_the_filled_defaults_are_what_the_component_is_built_with():
    cfg = load_config(MAML, ["data.way=3", "data.image_size=16", "log.period=7", "algorithm.name=fomaml"])
    backbone = cfg.model.backbone
    assert (backbone.hidden, backbone.num_classes, backbone.in_channels, backbone.image_size) == (64, 3, 1, 16)
    assert cfg.algorithm.first_order is True  # fomaml's preset, not GBML's default
    assert cfg.algorithm.diagnostics.metrics_period == 7 and cfg.algorithm.adapt == "all"
    assert cfg.pretrain.algorithm.diagnostics.metrics_period == 7 and cfg.pretrain.algorithm.momentum == 0.999


def test_a_pretraining_phase_follows_only_what_the_main_algorithm_sets():
    cfg = load_config(ROOT / "configs" / "anil_5shot.yaml", ["algorithm.inner_lr=0.2", "pretrain.iters=1"])
    assert cfg.algorithm.adapt == "head"  # anil's preset, not set by the config ...
    assert cfg.pretrain.algorithm.adapt == "all"  # ... so not passed on to the pretraining phase
    assert cfg.pretrain.algorithm.inner_lr == 0.2  # set: passed on
    cfg = load_config(MAML, ["algorithm.adapt=head", "pretrain.algorithm.inner_lr=0.1"])
    assert cfg.pretrain.algorithm.adapt == "head" and cfg.pretrain.algorithm.inner_lr == 0.1


@pytest.mark.parametrize("override, pattern", [
    ("model.backbone.hiden=32", r"unknown config key 'model\.backbone\.hiden'; did you mean 'model\.backbone\.hidden'\? "
                                r"\(an argument of a component registered by a user module is added with "
                                r"\+model\.backbone\.hiden=\.\.\.\)$"),
    ("algorithm.first_ordr=true",
     r"unknown config key 'algorithm\.first_ordr'; did you mean 'algorithm\.first_order'\? \("),
    ("pretrain.algorithm.momentun=0.5",
     r"unknown config key 'pretrain\.algorithm\.momentun'; did you mean 'pretrain\.algorithm\.momentum'\? \("),
])
def test_a_misspelled_component_argument_is_refused_with_a_suggestion(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(MAML, [override])


def test_an_argument_of_another_component_fails_when_built():
    from lil_meta.models import build_algorithm

    cfg = load_config(MAML, ["model.backbone.widths=[8,8,8,8]"])  # a resnet12 argument, conv4 named
    with pytest.raises(ConfigError, match=r"model\.backbone\.widths: unknown argument for backbone 'conv4'"):
        build_algorithm(cfg)


def test_the_logging_period_is_not_part_of_the_fingerprint():
    from lil_meta.engine.checkpoint import config_fingerprint

    prints = {config_fingerprint(load_config(MAML, ["pretrain.iters=5", f"log.period={p}"]))[0] for p in (1, 20)}
    assert len(prints) == 1


def test_an_override_hydra_cannot_parse_is_named_as_such():
    with pytest.raises(ConfigError, match=r"cannot parse a key=value override: no viable alternative at input '\['"):
        load_config(MAML, ["solver.lr=["])


def test_the_flat_algorithm_keys_of_earlier_versions_are_read_into_their_groups(tmp_path, caplog):
    """``algorithm.engine=vmap`` on the command line and ``metrics_period: 5`` in a file still
    work: each lands in its group, with one warning naming the new key."""
    with caplog.at_level("WARNING"):
        cfg = load_config(ROOT / "configs" / "maml_5shot.yaml",
                          ["algorithm.engine=vmap", "algorithm.inner_lr_mode=per_tensor",
                           "pretrain.algorithm.channels_last=none"])
    assert cfg.algorithm.execution.engine == "vmap" and cfg.algorithm.rates.mode == "per_tensor"
    assert cfg.pretrain.algorithm.execution.channels_last == "none"
    assert "engine" not in cfg.algorithm and "inner_lr_mode" not in cfg.algorithm
    said = [r.getMessage() for r in caplog.records]
    assert "config key algorithm.engine is deprecated; it was read as algorithm.execution.engine, its name from " \
           "now on" in said
    assert any("algorithm.inner_lr_mode is deprecated; it was read as algorithm.rates.mode" in m for m in said)
    old = tmp_path / "old.yaml"
    old.write_text("defaults:\n  - lil_schema\n  - _self_\nalgorithm:\n  name: maml\n  engine: loop\n"
                   "  metrics_period: 5\n  learn_inner_lr: true\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        cfg = load_config(old)
    assert (cfg.algorithm.execution.engine, cfg.algorithm.diagnostics.metrics_period, cfg.algorithm.rates.learn) == \
        ("loop", 5, True)
    assert sum("is deprecated" in r.getMessage() for r in caplog.records) == 3


def test_a_group_is_checked_key_by_key():
    with pytest.raises(ConfigError, match=r"algorithm\.execution\.engin: unknown setting \(accepted: channels_last, "
                                          r"checkpoint_inner_steps, engine, precompute_features\)"):
        from lil_meta.models import build_algorithm

        build_algorithm(load_config(ROOT / "configs" / "maml_5shot.yaml", ["algorithm.execution.engin=vmap"]))
