import pytest

from robustcheck.errors import UsageError
from robustcheck.params import parse_spec, parse_value, resolve_params


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
