"""The shipped alert rules and dashboard: promtool checks and unit-tests the rules, and every
``jobrunner_`` metric they use is one ``GET /metrics`` serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "jobrunner.json"


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package ships it; .ci/run installs it)")
    result = subprocess.run([promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_alert_rules():
    assert "SUCCESS: 4 rules found" in _promtool("check", "rules", RULES.name)


def test_promtool_unit_tests_of_the_alert_rules_pass():
    assert "SUCCESS" in _promtool("test", "rules", RULE_TESTS.name)


def _names(expressions: list[str]) -> set[str]:
    found = {name for expression in expressions for name in re.findall(r"\b((?:jobrunner|http)_\w+)", expression)}
    # A histogram's or counter's series names, as the exposition format writes them.
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in found}


def test_the_rules_and_the_dashboard_use_only_metrics_the_api_serves(client):
    rules = yaml.safe_load(RULES.read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    client.get("/jobs")  # so the HTTP metrics have a sample
    # Every family is listed (its HELP and TYPE lines), with samples or not; counters without _total.
    served = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    used = {re.sub(r"_total$", "", name) for name in _names(expressions)}
    assert used - served == set()
    assert {"jobrunner_queue_oldest_queued_age_seconds", "jobrunner_workers_alive"} <= used
