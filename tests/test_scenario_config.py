"""Scenario files: defaults, overrides, and a bad field is named in the error."""

from __future__ import annotations

import pytest

from scenarios import config
from topo import plan


def test_defaults_are_complete():
    scenario = config.load(None)
    assert scenario.handovers >= 20
    assert scenario.methods == config.DEFAULT_METHODS
    assert set(scenario.links) == set(plan.LINK_CLASSES)
    assert scenario.probe_rate >= 1000
    assert scenario.source == "built-in defaults"


def test_file_overrides_only_what_it_states(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\nl2_delay_ms = 200\n[links.ar_ar]\ndelay_ms = 30\nloss_percent = 1.5\n')
    scenario = config.load(path)
    assert scenario.name == "x" and scenario.l2_delay_ms == 200
    assert scenario.links[plan.AR_AR].delay_ms == 30 and scenario.links[plan.AR_AR].loss_percent == 1.5
    assert scenario.links[plan.ACCESS] == config.load(None).links[plan.ACCESS]
    assert scenario.parameters()["links"]["ar_ar"]["delay_ms"] == 30


@pytest.mark.parametrize("text, field", [
    ('l2_delay_ms = "fast"', "l2_delay_ms"),
    ("l2_delay_ms = -1", "l2_delay_ms"),
    ("handovers = 0", "handovers"),
    ("handovers = 2.5", "handovers"),
    ("[links.access]\ndelay_ms = true", "links.access.delay_ms"),
    ("[links.access]\nloss_percent = 101", "links.access.loss_percent"),
    ("[links.wifi]\ndelay_ms = 1", "links.wifi"),
    ("[links.access]\ndelai_ms = 1", "links.access.delai_ms"),
    ('methods = ["teleport"]', "methods[0]"),
    ("methods = []", "methods"),
    ("[probe]\nrate = 0", "probe.rate"),
    ("hand_overs = 3", "hand_overs"),
    ('name = "../escape"', "name"),
])
def test_bad_field_is_named(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(config.ScenarioError) as error:
        config.load(path)
    assert f"{path}: {field}" in str(error.value)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(config.ScenarioError, match="cannot read"):
        config.load(tmp_path / "missing.toml")
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(config.ScenarioError, match="not valid TOML"):
        config.load(path)


def test_shipped_scenarios_load():
    from pathlib import Path

    for path in sorted(Path(config.__file__).parent.glob("*.toml")):
        assert config.load(path).name


def test_default_schedule_sweeps_only_the_eap_baseline():
    schedule = config.load(None).schedule()
    assert [m for v, m in schedule if v is None] == ["none", "cxtp-predictive", "cxtp-reactive", "cxtp-network",
                                                      "reauth-psk"]
    assert [(v, m) for v, m in schedule if v is not None] == [(v, "reauth-eap") for v in (0, 10, 20, 50)]


def test_built_in_sweep_follows_the_methods_of_a_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('methods = ["none", "cxtp-reactive"]\n')
    scenario = config.load(path)
    assert scenario.sweep_parameter == "" and scenario.schedule() == [(None, "none"), (None, "cxtp-reactive")]
    path.write_text('methods = ["none"]\n[sweep]\nparameter = "links.ar_ar.delay_ms"\nvalues = [1, 2]\nmethods = ["reauth-eap"]\n')
    with pytest.raises(config.ScenarioError, match=r"sweep.methods\[0\]"):
        config.load(path)
