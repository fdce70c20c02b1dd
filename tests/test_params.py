import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from robustcheck.errors import UsageError
from robustcheck.params import Param, PluginSpec, format_spec, parse_spec, parse_value, resolve_params


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fgsm", ("fgsm", {})),
        ("pgd-linf:steps=20", ("pgd-linf", {"steps": 20})),
        ("pgd-linf:steps=20,epsilons=[0,8/255],random-start=false", ("pgd-linf", {"steps": 20, "epsilons": [0, 8 / 255], "random_start": False})),
        ("torchvision:CIFAR10:root=/data", ("torchvision:CIFAR10", {"root": "/data"})),
        ("torchvision:resnet18", ("torchvision:resnet18", {})),
        ("my_pkg.models:build", ("my_pkg.models:build", {})),
        ("/tmp/a:b/file.npz", ("/tmp/a:b/file.npz", {})),
        ("bit-depth:bits=3", ("bit-depth", {"bits": 3})),
    ],
)
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected


def test_parse_value_types():
    assert parse_value("0.5") == 0.5
    assert parse_value("true") is True
    assert parse_value("none") is None
    assert parse_value("[1, [2,3]]") == [1, [2, 3]]
    assert parse_value("hello") == "hello"


def test_resolve_params_merges_and_coerces():
    defaults = {"steps": 10, "eps": 0.1, "epsilons": [0.0, 0.1], "adaptive": True}
    out = resolve_params("probe 'x'", defaults, {"eps": 1, "epsilons": [0, 1]})
    assert out == {"steps": 10, "eps": 1.0, "epsilons": [0.0, 1.0], "adaptive": True}
    assert isinstance(out["eps"], float)


def test_resolve_params_unknown_key_suggests():
    with pytest.raises(UsageError, match=r"no parameter 'stepz' \(did you mean 'steps'\?\)"):
        resolve_params("probe 'x'", {"steps": 10}, {"stepz": 3})


@pytest.mark.parametrize(("given", "fragment"), [({"steps": "ten"}, "must be an integer"), ({"adaptive": 1}, "must be true or false"), ({"epsilons": ["a"]}, "list of numbers")])
def test_resolve_params_wrong_type(given, fragment):
    with pytest.raises(UsageError, match=fragment):
        resolve_params("probe 'x'", {"steps": 10, "adaptive": True, "epsilons": [0.0]}, given)


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


@given(
    name=st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    params=st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), _VALUES, max_size=4),
)
@example(name="a", params={"_": ["\\", None]})  # a string ending in an escaped backslash, then more items
def test_format_spec_round_trips(name, params):
    assert parse_spec(format_spec(name, params)) == (name, params)
    spec = PluginSpec("probe", name, params)
    assert PluginSpec.parse("probe", str(spec)) == spec


def test_param_declaration_checks_and_describes():
    steps = Param(20, "iterations", ge=1)
    steps.name = "steps"
    assert steps.coerce("7") == 7 and steps.coerce(3.0) == 3
    for bad in (0, -5, float("nan"), "ten", True, 2.5):
        with pytest.raises(ValueError, match=r"parameter 'steps' must be an integer >= 1, got"):
            steps.coerce(bad)
    epsilons = Param([0.0, 0.1], "sizes", ge=0, min_items=1, sort=True)
    epsilons.name = "epsilons"
    assert epsilons.coerce([0.3, 0, 1]) == [0.0, 0.3, 1.0] and epsilons.coerce(0.2) == [0.2]
    with pytest.raises(ValueError, match="a non-empty list of numbers >= 0"):
        epsilons.coerce([])
    assert epsilons.describe() == "a non-empty list of numbers >= 0; default [0.0,0.1]: sizes"


def test_param_reads_text_from_configs():
    epsilons = Param([0.0], "sizes", ge=0, min_items=1)
    epsilons.name = "epsilons"
    assert epsilons.coerce([0, "8/255"]) == [0.0, 8 / 255]
    assert epsilons.coerce("[0,8/255]") == [0.0, 8 / 255]
    flag = Param(True, "a flag")
    flag.name = "flag"
    assert flag.coerce("false") is False
