"""Property-based tests (hypothesis, derandomized so CI runs the same examples every time) of
config overrides: any valid value given as
``key=value`` lands in the config with its type; any unknown key fails with a ConfigError
naming it; and no value string runs code or reaches outside the config."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from lil_meta.engine.config import Config, load_config
from lil_meta.engine.errors import ConfigError
from tests_helpers import ROOT

TINY = ROOT / "tests" / "configs" / "tiny.yaml"
INT_KEYS = ["solver.max_iter", "solver.meta_batch", "data.way", "data.shot", "seed", "test.tasks"]
FLOAT_KEYS = ["solver.lr", "solver.weight_decay", "solver.clip_grad_norm"]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(key=st.sampled_from(INT_KEYS), value=st.integers(-(2**40), 2**40))
def test_integer_overrides_round_trip(key, value):
    """A value is stored as given, or refused by the value checks with a message naming its key."""
    try:
        cfg = load_config(TINY, [f"{key}={value}"])
    except ConfigError as exc:
        named = str(exc).split(":")[0]
        assert named == key or (named == "solver.meta_batch" and key.startswith("data.")), exc
        assert value < 1 or key != "test.tasks" or value > 10**6
        return
    assert OmegaConf.select(cfg, key) == value


@settings(max_examples=40, deadline=None, derandomize=True)
@given(key=st.sampled_from(FLOAT_KEYS),
       value=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30))
def test_float_overrides_round_trip(key, value):
    try:
        cfg = load_config(TINY, [f"{key}={value!r}"])
    except ConfigError as exc:
        assert str(exc).startswith(f"{key}: ") and value <= 0
        return
    assert OmegaConf.select(cfg, key) == pytest.approx(value, rel=1e-15, abs=0)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(section=st.sampled_from(["solver", "data", "test", "log"]),
       name=st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True))
def test_unknown_keys_fail_naming_the_key(section, name):
    if name in OmegaConf.structured(Config)[section]:
        return
    with pytest.raises(ConfigError, match=rf"unknown config key '{section}\.{name}'"):
        load_config(TINY, [f"{section}.{name}=1"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_any_string_value_is_data_or_a_clean_error(text):
    """A value never executes: without interpolation syntax it is stored exactly as given;
    anything else is stored as a string or refused with a ConfigError."""
    quoted = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    try:
        cfg = load_config(TINY, [f"output_dir={quoted}"])
    except ConfigError:
        assert "$" in text or "\\" in text
        return
    assert isinstance(cfg.output_dir, str)
    if text == "???":  # OmegaConf's "missing" marker: output_dir falls back to its default
        assert cfg.output_dir == "output/tiny"
    elif "$" not in text and "\\" not in text:
        assert cfg.output_dir == text
