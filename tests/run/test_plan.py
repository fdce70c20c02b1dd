"""Tests of the audit plan (robustcheck.run.plan): CLI/TOML values -> run units."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustcheck.errors import UsageError
from robustcheck.run.plan import AuditPlan
from robustcheck.run.runner import Runner

pytestmark = pytest.mark.usefixtures("single_thread")


def _units(cli: dict, config: Path | None = None) -> list[tuple[str, str | None, str]]:
    specs = AuditPlan.from_sources(cli, config).specs(Runner(None, quiet=True))
    return [(s.model, str(s.defense) if s.defense else None, str(s.probe)) for s in specs]


def test_duplicated_specs_run_once_in_first_occurrence_order() -> None:
    cli = {
        "models": ["digits-cnn", "digits-cnn"],
        "probes": ["fgsm", "pgd-linf:steps=2", "fgsm"],
        "defenses": ["none", "bit-depth:bits=4", "none", "bit-depth:bits=4"],
    }
    assert _units(cli) == [
        ("digits-cnn", None, "fgsm"),
        ("digits-cnn", None, "pgd-linf:steps=2"),
        ("digits-cnn", "bit-depth:bits=4", "fgsm"),
        ("digits-cnn", "bit-depth:bits=4", "pgd-linf:steps=2"),
    ]
    assert _units({"probes": ["fgsm"], "defenses": ["none", "none"]}) == [("digits-cnn", None, "fgsm")]


def test_specs_equal_after_checking_run_once() -> None:
    # "8/255" is checked into the number it stands for: the same run as that number
    units = _units({"probes": ["fgsm:epsilons=[0,8/255]", f"fgsm:epsilons=[0,{8 / 255!r}]"], "defenses": ["none"]})
    assert len(units) == 1


def test_samples_all(tmp_path: Path) -> None:
    assert AuditPlan.from_sources({"samples": "all"}).samples is None
    assert AuditPlan.from_sources({"samples": 7}).samples == 7
    config = tmp_path / "audit.toml"
    config.write_text('samples = "all"\n')
    plan = AuditPlan.from_sources({}, config)
    assert plan.samples is None
    assert {s.samples for s in plan.specs(Runner(None, quiet=True))} == {None}
    for bad in (0, -3, "many", 2.5, True):
        with pytest.raises(UsageError, match="samples"):
            AuditPlan.from_sources({"samples": bad})


def test_input_shape_reaches_every_model(tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text('models = ["digits-cnn", { source = "digits-cnn", name = "other" }]\n')
    plan = AuditPlan.from_sources({"input_shape": (3, 32, 32)}, config)
    assert [m.options for m in plan.models] == [{"input_shape": [3, 32, 32]}, {"name": "other", "input_shape": [3, 32, 32]}]
    runner = Runner(None, quiet=True)
    specs = AuditPlan.from_sources({"input_shape": (3, 32, 32), "probes": ["fgsm"], "defenses": ["none"]}).specs(runner)
    assert specs[0].model_options == {"input_shape": [3, 32, 32]} and runner.model(specs[0].model).input_shape == (3, 32, 32)


def test_budgets_default_to_each_probes_own_and_the_user_overrides_them(tmp_path: Path) -> None:
    from robustcheck.params import PluginSpec
    from robustcheck.plugins import plugin_class

    def budgets(cli: dict, config: Path | None = None) -> dict[str, float | None]:
        specs = AuditPlan.from_sources({"defenses": ["none"], **cli}, config).specs(Runner(None, quiet=True))
        return {s.probe.name: s.budget_s for s in specs}

    probes = ["fgsm", "fooling"]
    own = {name: plugin_class(PluginSpec("probe", name)).default_budget_s for name in probes}
    assert budgets({"probes": probes}) == own and own["fooling"] > own["fgsm"]  # fooling's searches cost more
    assert budgets({"probes": probes, "budget": 7.0}) == {"fgsm": 7.0, "fooling": 7.0}
    assert budgets({"probes": probes, "budget": 0}) == {"fgsm": None, "fooling": None}  # 0: none
    config = tmp_path / "audit.toml"
    config.write_text("budget = 9\n")
    assert budgets({"probes": probes}, config) == {"fgsm": 9.0, "fooling": 9.0}
