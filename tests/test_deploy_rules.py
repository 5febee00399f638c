"""deploy/prometheus/rules.yml is valid, and its unit tests (rules_test.yml) pass under promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_rules_check() -> None:
    assert "SUCCESS" in promtool("check", "rules", "rules.yml")


def test_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")
