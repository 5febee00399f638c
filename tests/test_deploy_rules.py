"""deploy/prometheus/rules.yml and kubernetes-rules.yml are valid, and their unit tests (rules_test.yml)
pass under promtool."""

from __future__ import annotations

import collections
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool binary (scripts/install_prometheus.sh installs Debian's prometheus with it)"
)


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


RULE_FILES = ("rules.yml", "kubernetes-rules.yml")


def test_rules_check() -> None:
    output = promtool("check", "rules", *RULE_FILES)
    assert output.count("SUCCESS") == len(RULE_FILES), output


def test_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")


def test_unit_tests_cover_both_files_and_the_startup_of_a_pod() -> None:
    """rules_test.yml loads both rule files, and has the cases a review asked for: a pod starting up
    (3 min of init containers, 3 min loading) pages for nothing; a serving pod that goes not ready,
    and a target that was up and goes down, do; a pod that never becomes ready is caught too."""
    tests = yaml.safe_load((RULES / "rules_test.yml").read_text())
    assert tuple(tests["rule_files"]) == RULE_FILES
    checked = collections.defaultdict(list)  # alert -> [(eval_time, expected to fire)]
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            checked[check["alertname"]].append((check["eval_time"], bool(check["exp_alerts"])))
    defined = {
        rule["alert"]
        for name in RULE_FILES
        for group in yaml.safe_load((RULES / name).read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    for alert in defined:  # every alert is seen firing and seen quiet
        assert {fires for _, fires in checked[alert]} == {False, True}, (alert, checked[alert])
    startup = [c for c in tests["tests"] if any("tensorgate-new" in s["series"] for s in c["input_series"])]
    assert len(startup) == 1, "the startup case (series of pod tensorgate-new)"
    quiet = {(c["alertname"], c["eval_time"]) for c in startup[0]["alert_rule_test"] if not c["exp_alerts"]}
    assert {("TensorgateScrapeDown", "2m30s"), ("TensorgateServerNotReady", "5m30s")} <= quiet, quiet
    # and a new pod that reuses a deleted pod's IP (the same instance label) starts up quietly too
    reuse = [c for c in tests["tests"] if any("tensorgate-reusing" in s["series"] for s in c["input_series"])]
    assert len(reuse) == 1, "the IP-reuse case (series of pod tensorgate-reusing)"
    quiet = {c["alertname"] for c in reuse[0]["alert_rule_test"] if not c["exp_alerts"]}
    assert {"TensorgateServerNotReady", "TensorgateScrapeDown", "TensorgateModelNotReady"} <= quiet, quiet
