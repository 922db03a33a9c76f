"""promtool check rules / test rules on the chart's recording rules and alerts."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

import chartlib
from chartlib import CHART, HERE, VARIANTS

pytestmark = pytest.mark.chart

RULES_DIR = HERE / "rules"


def _promtool(promtool, *args, cwd=None) -> str:
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_recording_rules_file_checks(promtool):
    """The plain rules file (also loaded as is by the e2e Prometheus) is valid."""
    out = _promtool(promtool, "check", "rules", str(CHART / "files" / "rules" / "recording.yaml"))
    assert "SUCCESS" in out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_rules_check(helm, promtool, variant, tmp_path):
    docs = chartlib.render(variant)
    if not chartlib.of_kind(docs, "PrometheusRule"):
        pytest.skip("rules disabled in this variant")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(chartlib.rules_of(docs), sort_keys=False))
    out = _promtool(promtool, "check", "rules", str(path))
    assert "SUCCESS" in out


@pytest.fixture(scope="module")
def ruletest_rules(helm):
    docs = chartlib.render_with(str(RULES_DIR / "ruletest-values.yaml"))
    return chartlib.rules_of(docs)


def test_alert_unit_tests(promtool, ruletest_rules, tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(ruletest_rules, sort_keys=False))
    shutil.copy(RULES_DIR / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    out = _promtool(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert "SUCCESS" in out


def _alerts(rules) -> list[dict]:
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_firing_and_a_quiet_case(ruletest_rules):
    tests = yaml.safe_load((RULES_DIR / "alerts_test.yaml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in _alerts(ruletest_rules)}
    assert names == {"VoxmeshTTFAHigh", "VoxmeshBargeInStopSlow", "VoxmeshErrorRatioHigh", "VoxmeshPoolSaturated", "VoxmeshRecoveryStorm"}
    assert names <= firing, f"alerts with no firing test: {names - firing}"
    assert names <= quiet, f"alerts with no quiet test: {names - quiet}"


@pytest.mark.parametrize("variant", ["default", "gpu", "cpu"])
def test_alerts_are_routable_and_explained(helm, variant):
    for alert in _alerts(chartlib.rules_of(chartlib.render(variant))):
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
        assert alert.get("for"), f"{alert['alert']} fires on a single evaluation"


def test_objectives_follow_values(helm):
    gpu = {a["alert"]: a["expr"] for a in _alerts(chartlib.rules_of(chartlib.render("gpu")))}
    cpu = {a["alert"]: a["expr"] for a in _alerts(chartlib.rules_of(chartlib.render("cpu")))}
    assert gpu["VoxmeshTTFAHigh"].strip().endswith("> 0.5")
    assert cpu["VoxmeshTTFAHigh"].strip().endswith("> 1.5")
    # saturation thresholds are the autoscaling targets x saturationFactor
    assert 'voxmesh:pool_load_per_pod:avg{pool="llm"} > 2.4' in gpu["VoxmeshPoolSaturated"]
    assert 'voxmesh:pool_load_per_pod:avg{pool="stt"} > 9.6' in gpu["VoxmeshPoolSaturated"]
