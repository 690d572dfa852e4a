#!/usr/bin/env python3
"""Checks deploy/monitoring offline and against a running fleet: the Prometheus configuration
and alert rules are well formed (every rule has a name, an expression, a severity and a
summary; promtool checks them too where it is installed), the Grafana dashboard is JSON whose
every panel has a query, and every pushfleet_* metric the rules and the dashboard name is one a
running fleet (a control node with a status webhook and two push nodes, on Redis) exports on
/metrics."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import yaml

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "monitoring")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "e2e"))
from fleet import Fleet  # noqa: E402


def fail(message):
    print(f"deploy/monitoring: {message}", file=sys.stderr)
    sys.exit(1)


def exported(url):
    """The metric families a /metrics page has (histogram and summary parts folded in)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, 1)[0])
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True)
    args = parser.parse_args()

    with open(os.path.join(HERE, "prometheus.yml")) as f:
        prometheus = yaml.safe_load(f)
    jobs = {job["job_name"] for job in prometheus.get("scrape_configs", [])}
    if jobs != {"pushfleet-control", "pushfleet-node"}:
        fail(f"prometheus.yml scrapes {sorted(jobs)}")
    with open(os.path.join(HERE, "alerts.yml")) as f:
        alerts = yaml.safe_load(f)
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    for rule in rules:
        if not (rule.get("alert") and rule.get("expr") and rule.get("labels", {}).get("severity")
                and rule.get("annotations", {}).get("summary")):
            fail(f"alert rule without a name, expression, severity or summary: {rule}")
    wanted = {"PushFleetNodeDown", "PushFleetRedisUnreachable", "PushFleetQueuesGrowing", "PushFleetConnectRefusalSpike"}
    if not wanted <= {rule["alert"] for rule in rules}:
        fail(f"alerts.yml lacks {sorted(wanted - {rule['alert'] for rule in rules})}")
    if shutil.which("promtool"):
        result = subprocess.run(["promtool", "check", "rules", os.path.join(HERE, "alerts.yml")], capture_output=True, text=True)
        if result.returncode != 0:
            fail("promtool: " + result.stdout + result.stderr)
    with open(os.path.join(HERE, "grafana", "pushfleet-dashboard.json")) as f:
        dashboard = json.load(f)
    queries = []
    for panel in dashboard["panels"]:
        targets = [target.get("expr") for target in panel.get("targets", [])]
        if not targets or not all(targets):
            fail(f"dashboard panel {panel.get('title')!r} has no query")
        queries += targets
    referenced = set()
    for expr in queries + [rule["expr"] for rule in rules]:
        referenced |= set(re.findall(r"\bpushfleet_[a-z_]+", expr))

    # The control node with a webhook (to a port nobody listens on: it keeps retrying), so that
    # it exports the webhook's metrics too.
    from fleet import free_port
    fleet = Fleet(args.bin, controls=1, nodes=2,
                  control_args=["--status-events", "1000", "--status-webhook", f"http://127.0.0.1:{free_port()}/events"])
    try:
        fleet.start_all()
        available = exported(f"http://127.0.0.1:{fleet.control_port}/metrics")
        for port in fleet.admin_ports:
            available |= exported(f"http://127.0.0.1:{port}/metrics")
    finally:
        fleet.stop_all()
        shutil.rmtree(fleet.dir, ignore_errors=True)
    missing = sorted(referenced - available)
    if missing:
        fail(f"metrics the rules or the dashboard use that a running fleet does not export: {missing}")
    print(f"deploy/monitoring: {len(rules)} alert rules and {len(dashboard['panels'])} dashboard panels well formed; "
          f"the {len(referenced)} metrics they use all exported by a running fleet")


if __name__ == "__main__":
    main()
