#!/usr/bin/env python3
"""Pictures for README's Operations section, from a fleet under load on this machine:

- docs/images/dashboard.png: every panel of deploy/monitoring/grafana/pushfleet-dashboard.json,
  each query of it run by a real Prometheus (Debian's) scraping the fleet with the scrape jobs
  of deploy/monitoring/prometheus.yml, drawn with matplotlib in the dashboard's layout.
  Grafana itself is not on this machine: the picture shows the dashboard's queries and data,
  not Grafana's look.
- docs/images/admin-ui.png: the admin page (/ui) in headless Chromium during the same load.

The load: a control node and two push nodes on one Redis; 600 terminals held by
`pushfleet bench sub` (acknowledging), pushes through the batch API to them and to 200
terminals that never connect (their lists fill), topic pushes, a terminal publishing to the
topic the 600 subscribe to, connects with wrong passwords.
Bounded: --seconds of load (default 240). Needs prometheus, chromium, chromium-driver,
matplotlib and selenium. Usage: python3 scripts/dashboard-picture.py --bin .build/release/pushfleet"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "Tests", "e2e"))
from fleet import SECRET, Fleet, RawMQTT, free_port, wait_for, wait_port  # noqa: E402

DASHBOARD = os.path.join(ROOT, "deploy", "monitoring", "grafana", "pushfleet-dashboard.json")


def prometheus_config(fleet, path, interval):
    with open(os.path.join(ROOT, "deploy", "monitoring", "prometheus.yml")) as f:
        jobs = [line.split(":", 1)[1].strip() for line in f if line.strip().startswith("- job_name:")]
    assert jobs == ["pushfleet-control", "pushfleet-node"], jobs
    targets = {"pushfleet-control": [f"127.0.0.1:{p}" for p in fleet.control_ports],
               "pushfleet-node": [f"127.0.0.1:{p}" for p in fleet.admin_ports]}
    with open(path, "w") as f:
        f.write(f"global:\n  scrape_interval: {interval}s\n  evaluation_interval: {interval}s\nscrape_configs:\n")
        for job in jobs:
            f.write(f"  - job_name: {job}\n    static_configs:\n      - targets: {json.dumps(targets[job])}\n")


def query_range(port, expr, start, end, step):
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query_range?{query}", timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def legend(template, labels):
    text = template or "{{__name__}}"
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text.replace("{{instance}}", "").strip() or "value"


class Load:
    """Pushes and connect attempts until stopped (each loop step bounded in time)."""

    def __init__(self, fleet, terminals):
        self.fleet = fleet
        self.terminals = terminals
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.pushes, daemon=True), threading.Thread(target=self.refusals, daemon=True),
                        threading.Thread(target=self.publishes, daemon=True)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def pushes(self):
        rng = random.Random(1)
        step = 0
        while not self.stop.is_set():
            step += 1
            # Busier in the middle of the run: rates that move.
            size = 40 + int(60 * abs(((step % 60) - 30) / 30))
            messages = [{"to": [f"d-{rng.randrange(self.terminals)}"], "payload": f"m{step}-{i}", "qos": rng.choice([0, 1, 1, 2])}
                        for i in range(size)]
            messages += [{"to": [f"away-{rng.randrange(200)}"], "payload": f"w{step}", "qos": 1, "ttl": 3600} for _ in range(10)]
            messages.append({"topic": "news/all", "payload": f"t{step}", "qos": 1})
            self.fleet.api("POST", "/v1/push/batch", {"messages": messages})
            self.stop.wait(0.5)

    def publishes(self):
        """A terminal publishing to the topic every held terminal subscribes to, every 2 s."""
        client = RawMQTT(self.fleet.lb_mqtt)
        client.connect("publisher", self.fleet.credential("publisher"))
        packet = 0
        while not self.stop.is_set():
            packet = packet % 65535 + 1
            client.publish("news/all", f"from a terminal {packet}".encode(), qos=1, packet_id=packet)
            client.read()  # PUBACK
            self.stop.wait(2.0)
        client.close()

    def refusals(self):
        while not self.stop.is_set():
            for _ in range(3):
                client = RawMQTT(self.fleet.lb_mqtt)
                client.connect("intruder", "v1.0.0.wrong")
                client.close()
            self.stop.wait(1.0)


def draw(dashboard, prometheus_port, start, end, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) // 8
    figure, axes = plt.subplots(rows, 2, figsize=(16, 3.1 * rows), facecolor="#111217")
    step = max(2, int((end - start) / 200))
    for panel in panels:
        grid = panel["gridPos"]
        axis = axes[grid["y"] // 8][grid["x"] // 12]
        axis.set_facecolor("#181b1f")
        axis.set_title(panel["title"], color="#d8d9da", fontsize=11, loc="left")
        axis.tick_params(colors="#8e8e8e", labelsize=8)
        for spine in axis.spines.values():
            spine.set_color("#2c3235")
        axis.grid(color="#2c3235", linewidth=0.6)
        for target in panel["targets"]:
            for series in query_range(prometheus_port, target["expr"], start, end, step):
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                axis.plot(times, values, linewidth=1.4, label=legend(target.get("legendFormat"), series["metric"]))
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        axis.set_xlabel("seconds into the run", color="#8e8e8e", fontsize=8)
        if unit:
            axis.set_ylabel({"ops": "per second", "s": "seconds", "bytes": "bytes", "short": ""}.get(unit, unit), color="#8e8e8e", fontsize=8)
        if axis.lines:
            axis.legend(fontsize=7, facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da", loc="upper left", ncol=2)
    figure.suptitle("PushFleet dashboard (deploy/monitoring/grafana): its queries on Prometheus, drawn by scripts/dashboard-picture.py",
                    color="#d8d9da", fontsize=12)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=80, facecolor=figure.get_facecolor())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--seconds", type=int, default=240)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images"))
    args = parser.parse_args()
    for tool in ["prometheus", "chromium", "chromedriver"]:
        if not shutil.which(tool):
            sys.exit(f"dashboard-picture: {tool} is not installed")
    os.makedirs(args.out, exist_ok=True)
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    fleet = Fleet(args.bin, controls=1, nodes=2, node_args=["--publish-topics", "news/all", "--public-topics", "news/all"])
    processes = []
    load = None
    try:
        fleet.start_all()
        config = os.path.join(fleet.dir, "prometheus.yml")
        prometheus_config(fleet, config, interval=2)
        prometheus_port = free_port()
        processes.append(subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={fleet.dir}/tsdb",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(prometheus_port)
        start = time.time()
        ready = os.path.join(fleet.dir, "bench-ready")
        ports = ",".join(str(p) for p in fleet.node_ports)
        processes.append(subprocess.Popen(
            [fleet.binary, "bench", "sub", "--port", ports, "--count", "600", "--prefix", "d-", "--secret", SECRET,
             "--topic", "news/all", "--connect-rate", "100", "--seconds", str(args.seconds + 60), "--idle", str(args.seconds + 60),
             "--ready-file", ready], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(ready), timeout=60, what="600 terminals connected")
        load = Load(fleet, 600)
        load.start()
        time.sleep(args.seconds * 0.75)
        # The admin page, with the key given, during the load.
        admin = free_port()
        fleet.start("control-ui", [fleet.binary, "control", "--redis", f"redis://127.0.0.1:{fleet.redis_port}", "--listen",
                                   f"127.0.0.1:{admin}", "--api-key", "picture-key", "--consumer", "cui"], env={"PUSHFLEET_SECRET": SECRET})
        wait_port(admin)
        sys.path.insert(0, os.path.join(ROOT, "Tests", "e2e"))
        from ui import browser
        from selenium.webdriver.common.by import By
        driver = browser()
        try:
            driver.get(f"http://127.0.0.1:{admin}/ui")
            driver.find_element(By.ID, "api-key").send_keys("picture-key")
            driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
            time.sleep(8)  # rates over several readings
            driver.find_element(By.ID, "terminal-id").send_keys("away-7")
            driver.find_element(By.CSS_SELECTOR, "#terminal-form button").click()
            status = fleet.api("POST", "/v1/push", {"to": ["d-1"], "payload": "hello from the admin page"})[1]
            driver.find_element(By.ID, "message-id").send_keys(status["id"])
            time.sleep(1)
            driver.find_element(By.CSS_SELECTOR, "#message-form button").click()
            time.sleep(2)
            driver.save_screenshot(os.path.join(args.out, "admin-ui.png"))
        finally:
            driver.quit()
        time.sleep(max(0, start + args.seconds - time.time()))
        load.finish()
        load = None
        time.sleep(4)  # the last scrape
        draw(dashboard, prometheus_port, start, time.time(), os.path.join(args.out, "dashboard.png"))
        print(f"dashboard-picture: wrote {args.out}/dashboard.png and {args.out}/admin-ui.png")
    finally:
        if load:
            load.finish()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        fleet.stop_all()


if __name__ == "__main__":
    main()
