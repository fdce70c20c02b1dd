import pytest

from robustcheck import registry
from robustcheck.api import Probe, ProbeResult
from robustcheck.errors import UnknownPluginError, UsageError


def test_builtins_come_from_entry_points():
    assert {"fgsm", "pgd-linf", "pgd-l2", "deepfool", "cw-l2", "boundary"} <= set(registry.names("probe"))
    assert {"digits-mlp", "digits-cnn"} <= set(registry.names("model"))
    assert {"bit-depth", "median-filter"} <= set(registry.names("defense"))
    assert {"digits", "digits-rgb32", "foolbox-mnist"} <= set(registry.names("data"))
    entry = registry.get("probe", "fgsm")
    assert entry.source == "builtin" and entry.obj.name == "fgsm" and entry.summary


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownPluginError, match=r"unknown probe 'pgd-lin'; did you mean 'pgd-linf'"):
        registry.get("probe", "pgd-lin")


def test_unknown_kind():
    with pytest.raises(UsageError, match="unknown plugin kind"):
        registry.names("widget")


def test_register_decorator_in_process():
    @registry.register("probe", "constant-test")
    class Constant(Probe):
        """Always 1."""

        score_doc = "1 always."

        def run(self, model, data, context):
            return ProbeResult(1.0)

    try:
        assert "constant-test" in registry.names("probe")
        assert registry.get("probe", "constant-test").obj is Constant
        assert Constant.name == "constant-test"
    finally:
        registry.unregister("probe", "constant-test")
    assert "constant-test" not in registry.names("probe")
