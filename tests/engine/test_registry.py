import pytest

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import Registry


def make_registry():
    reg = Registry("widget")

    @reg.register("square")
    class Square:
        def __init__(self, size: int, color: str = "red"):
            self.size, self.color = size, color

    reg.register("blue_square", Square, color="blue")
    return reg, Square


def test_build_passes_remaining_keys_as_kwargs():
    reg, square = make_registry()
    obj = reg.build({"name": "square", "size": 3, "color": "green"}, "shape")
    assert isinstance(obj, square) and (obj.size, obj.color) == (3, "green")


def test_presets_and_defaults():
    reg, _ = make_registry()
    obj = reg.build({"name": "blue_square"}, "shape", defaults={"size": 7, "unused": 1})
    assert (obj.size, obj.color) == (7, "blue")


def test_unknown_name_lists_registered_names():
    reg, _ = make_registry()
    with pytest.raises(ConfigError, match=r"shape.name: unknown widget 'sqare'; did you mean 'square'\? \(registered: blue_square, square\)"):
        reg.build({"name": "sqare", "size": 1}, "shape")


def test_unknown_keyword_names_path_and_accepted_arguments():
    reg, _ = make_registry()
    with pytest.raises(ConfigError, match=r"shape.colour: unknown argument .*did you mean 'color'\? \(accepted: size, color\)"):
        reg.build({"name": "square", "size": 1, "colour": "red"}, "shape")


def test_missing_required_argument():
    reg, _ = make_registry()
    with pytest.raises(ConfigError, match="shape: cannot build widget 'square'.*size"):
        reg.build({"name": "square"}, "shape")


def test_missing_name():
    reg, _ = make_registry()
    with pytest.raises(ConfigError, match="shape.name: missing"):
        reg.build({"size": 1}, "shape")


def test_double_registration_is_refused():
    reg, _ = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("square", object)


def test_subclass_passing_kwargs_on_accepts_and_checks_its_bases_arguments():
    reg, square = make_registry()

    @reg.register("framed")
    class Framed(square):
        def __init__(self, size: int, frame: int = 1, **kwargs):
            super().__init__(size, **kwargs)
            self.frame = frame

    obj = reg.build({"name": "framed", "frame": 2, "color": "green"}, "shape", defaults={"size": 4})
    assert (obj.size, obj.frame, obj.color) == (4, 2, "green")
    with pytest.raises(ConfigError, match=r"shape.colr: unknown argument .*did you mean 'color'\? \(accepted: size, frame, color\)"):
        reg.build({"name": "framed", "size": 1, "colr": "red"}, "shape")


def test_defaults_are_what_a_config_without_the_keys_builds_with():
    reg = Registry("widget")

    class Base:
        def __init__(self, net, widths=(1, 2), act=print, losses=None):
            pass

    class Sub(Base):
        def __init__(self, net, rate: float = 0.5, **kwargs):
            super().__init__(net, **kwargs)

    reg.register("sub", Sub, rate=0.25)
    # the preset over the signature, the bases' arguments through **kwargs, tuples as lists;
    # no required argument, no supplied one (losses), no value a config cannot hold (act)
    assert reg.defaults("sub", supplied=("losses",)) == {"rate": 0.25, "widths": [1, 2]}
    assert reg.argument_names(supplied=("net", "losses")) == {"rate", "widths", "act"}
