#!/usr/bin/env python3
"""Measures how PushFleet's Redis load divides over Redis Cluster shards, and writes the
section between the `shards` markers of BENCHMARKS.md and CAPACITY.md.

The same unicast QoS 1 load (scenario c of scripts/bench.py: stored pushes through the batch
API, 200 a request, each terminal acknowledging) runs against one redis-server (not a
cluster, for reference), then Redis Clusters of 1, 2 and 3 masters (no replicas; slots split
evenly with CLUSTER ADDSLOTSRANGE, as `redis-cli --cluster create` needs three masters at
least). The fleet: one control node, two push nodes, each node given the first master's
address. Two load tools publish, one per push node's half of the terminals.

Per shard: its Redis CPU and commands per delivered message (`INFO commandstats` after
`CONFIG RESETSTAT`, CPU from /proc), and its share of the commands; for the fleet: delivered
messages per second and the whole fleet's CPU per message. This machine has two cores for
everything (shards, nodes and load tools), so the fleet's throughput cannot grow with shards
here: the per-shard figures are what scales.

Usage: python3 scripts/shards.py [--bin .build/release/pushfleet] [--runs 3] [--quick]
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "e2e"))
from bench import SECRET, command_calls, cpu_ticks, last_json  # noqa: E402
from fleet import cluster_port, free_port, wait_for, wait_port  # noqa: E402

BEGIN = "<!-- shards: written by scripts/shards.py -->"
END = "<!-- /shards -->"


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30).stdout.strip()


class Fleet:
    """`shards` cluster masters (0: one plain redis-server), a control node, two push nodes."""

    def __init__(self, workdir, binary, shards):
        self.workdir, self.shards = workdir, shards
        self.redis_ports = [cluster_port() for _ in range(max(1, shards))]
        self.redis = []
        for port in self.redis_ports:
            directory = os.path.join(workdir, f"redis-{port}")
            os.makedirs(directory)
            cluster = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"] if shards else []
            log = os.path.join(directory, "redis.log")
            self.redis.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "yes",
                 "--appendfsync", "everysec", "--lazyfree-lazy-expire", "yes", "--logfile", log, *cluster]))
            wait_for(lambda: os.path.exists(log) and "Ready to accept" in open(log).read(), what="redis-server")
        if shards:
            self.make_cluster()
        env = dict(os.environ, PUSHFLEET_SECRET=SECRET, PUSHFLEET_LOG_LEVEL="warning")
        log = open(os.path.join(workdir, "pushfleet.log"), "a")
        redis = f"redis://127.0.0.1:{self.redis_ports[0]}"
        self.api_port = free_port()
        self.node_ports = [free_port(), free_port()]
        self.control = subprocess.Popen([binary, "control", "--redis", redis, "--listen", f"127.0.0.1:{self.api_port}"],
                                        stdout=log, stderr=log, env=env)
        self.nodes = [subprocess.Popen([binary, "node", "--redis", redis, "--mqtt", f"127.0.0.1:{port}", "--node-id", f"s{index}",
                                        "--max-connect-rate", "0"], stdout=log, stderr=log, env=env)
                      for index, port in enumerate(self.node_ports)]
        for port in [self.api_port, *self.node_ports]:
            wait_port(port)

    def make_cluster(self):
        per = 16384 // self.shards
        for index, port in enumerate(self.redis_ports):
            end = 16383 if index == self.shards - 1 else (index + 1) * per - 1
            redis_cli(port, "CLUSTER", "ADDSLOTSRANGE", str(index * per), str(end))
        for port in self.redis_ports[1:]:
            redis_cli(self.redis_ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port))
        wait_for(lambda: all("cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in self.redis_ports)
                 and all(len(redis_cli(p, "CLUSTER", "NODES").splitlines()) == self.shards for p in self.redis_ports),
                 timeout=30, what="cluster ok")

    def cost_pids(self):
        pids = {f"redis{index}": proc.pid for index, proc in enumerate(self.redis)}
        pids.update(control=self.control.pid, node0=self.nodes[0].pid, node1=self.nodes[1].pid)
        return pids

    def stop(self):
        for proc in [self.control, *self.nodes, *self.redis]:
            proc.send_signal(signal.SIGTERM)
        for proc in [self.control, *self.nodes, *self.redis]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def settle(ports, timeout=10.0):
    """Until the shards together see fewer than 20 commands in 250 ms (as bench.py's settle)."""
    def total():
        return sum(sum(command_calls(port).values()) for port in ports)
    deadline, last = time.time() + timeout, total()
    while time.time() < deadline:
        time.sleep(0.25)
        now = total()
        if now - last < 20:
            return
        last = now


def run(binary, shards, run_number, terminals, messages):
    workdir = tempfile.mkdtemp(prefix="pushfleet-shards-")
    fleet = Fleet(workdir, binary, shards)
    subs = []
    try:
        half = terminals // 2
        prefixes = [f"s{shards}r{run_number}n{index}-" for index in range(2)]
        for index, port in enumerate(fleet.node_ports):
            ready = os.path.join(workdir, f"ready{index}")
            sub = subprocess.Popen([binary, "bench", "sub", "--count", str(half), "--prefix", prefixes[index], "--qos", "1",
                                    "--expect", str(messages // 2), "--seconds", "240", "--idle", "8", "--ready-file", ready,
                                    "--linger", "30", "--port", str(port), "--secret", SECRET],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            subs.append((sub, ready))
        for _, ready in subs:
            wait_for(lambda: os.path.exists(ready), timeout=120, what="subscribers connected")
        time.sleep(1.0)
        for port in fleet.redis_ports:
            redis_cli(port, "CONFIG", "RESETSTAT")
        pids = fleet.cost_pids()
        start = {name: cpu_ticks(pid) for name, pid in pids.items()}
        pubs = [subprocess.Popen([binary, "bench", "pub", "--via", "api", "--api", f"http://127.0.0.1:{fleet.api_port}", "--targets",
                                  str(half), "--target-prefix", prefix, "--messages", str(messages // 2), "--qos", "1", "--rate", "0",
                                  "--seconds", "300", "--batch", "200", "--concurrency", "4"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for prefix in prefixes]
        sent = sum(last_json(pub.communicate(timeout=600)[0])["sent"] for pub in pubs)
        summaries = []
        for sub, _ in subs:
            line = ""
            while not line.startswith("{"):
                line = sub.stdout.readline()
                if not line:
                    raise RuntimeError("a subscriber ended without a summary")
            summaries.append(json.loads(line))
        settle(fleet.redis_ports)
        used = {name: cpu_ticks(pid) - start[name] for name, pid in pids.items()}
        delivered = max(1, sum(s["unique"] for s in summaries))
        calls = [sum(command_calls(port).values()) for port in fleet.redis_ports]
        result = {
            "shards": shards, "sent": sent, "unique": delivered, "lost": max(0, sent - delivered),
            "duplicated": sum(s["duplicates"] for s in summaries),
            # Both halves run at once: the fleet's rate is their sum.
            "messages_per_second": sum(s["messagesPerSecond"] for s in summaries),
            "fleet_cpu_us_per_message": sum(used.values()) * 10_000 / delivered,
            "redis_cpu_us_per_message": [used[f"redis{i}"] * 10_000 / delivered for i in range(len(fleet.redis_ports))],
            "redis_commands_per_message": [c / delivered for c in calls],
            "command_share": [c / max(1, sum(calls)) for c in calls],
        }
        print(f"  {'single server' if shards == 0 else f'{shards} shard(s)'} run {run_number}: {result}", flush=True)
        return result
    finally:
        for sub, _ in subs:
            if sub.poll() is None:
                sub.kill()
        fleet.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def median(values):
    return statistics.median(values) if values else float("nan")


def section(results, args, seconds):
    def med(shards, key):
        return median([r[key] for r in results[shards]])

    def per_shard(shards, key, fmt):
        columns = list(zip(*[r[key] for r in results[shards]]))
        return ", ".join(fmt.format(median(column)) for column in columns)

    lines = [
        BEGIN,
        "## Redis load over 1, 2 and 3 cluster shards",
        "",
        f"Written by `scripts/shards.py` (`make shards`) on {datetime.date.today().isoformat()} in {seconds / 60:.1f} minutes: "
        f"{args.terminals} terminals over two push nodes, {args.messages} unicast QoS 1 pushes through the batch API "
        "(scenario c's load, in two halves at once), one control node; medians of "
        f"{args.runs} runs. \"single server\" is one redis-server (not a cluster), for reference; the others are Redis "
        "Clusters of that many masters, no replicas, slots split evenly, every node given the first master's address. "
        "Per shard: its Redis CPU and commands per delivered message, and its share of all commands. Two cores run "
        "everything here (shards, nodes, load tools), so the fleet's rate cannot grow with shards on this machine: "
        "what scales is each shard's share of the work.",
        "",
        "| Redis | delivered msg/s | fleet CPU per msg | Redis CPU per msg, per shard | Redis commands per msg, per shard | "
        "share of commands | lost | duplicated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shards in sorted(results):
        label = "single server" if shards == 0 else f"{shards} shard{'s' if shards > 1 else ''}"
        lines.append(
            f"| {label} | {med(shards, 'messages_per_second'):.0f} | {med(shards, 'fleet_cpu_us_per_message'):.1f} us | "
            f"{per_shard(shards, 'redis_cpu_us_per_message', '{:.1f}')} us | {per_shard(shards, 'redis_commands_per_message', '{:.2f}')} | "
            f"{per_shard(shards, 'command_share', '{:.0%}')} | {sum(r['lost'] for r in results[shards])} | "
            f"{sum(r['duplicated'] for r in results[shards])} |")
    if 3 in results and 1 in results:
        one = median([r["redis_cpu_us_per_message"][0] for r in results[1]])
        three = max(median(column) for column in zip(*[r["redis_cpu_us_per_message"] for r in results[3]]))
        lines += ["", f"The busiest of 3 shards spends {three:.1f} us of Redis CPU per message, against {one:.1f} us for "
                  f"1 shard ({three / one:.0%} of it)."]
    lines += ["", "Command: `python3 scripts/shards.py --bin .build/release/pushfleet` (or `make shards`).", END]
    return "\n".join(lines)


def replace_section(path, text):
    """Puts `text` between the markers in `path` (appended when the file has none)."""
    if not os.path.exists(path):
        return
    content = open(path).read()
    if BEGIN in content and END in content:
        before, rest = content.split(BEGIN, 1)
        content = before + text + rest.split(END, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(content)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=".build/release/pushfleet")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--terminals", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--sizes", default="0,1,2,3", help="shard counts to run (0: one server, not a cluster)")
    parser.add_argument("--out", nargs="*", default=["BENCHMARKS.md", "CAPACITY.md"])
    args = parser.parse_args()
    args.terminals = args.terminals or (2000 if args.quick else 10000)
    args.messages = args.messages or (20000 if args.quick else 60000)
    binary = os.path.abspath(args.bin)
    started = time.time()
    results = {}
    for run_number in range(args.runs):
        # Alternated, as bench.py does, so a noisy moment does not fall on one size only.
        for shards in [int(size) for size in args.sizes.split(",")]:
            results.setdefault(shards, []).append(run(binary, shards, run_number, args.terminals, args.messages))
    text = section(results, args, time.time() - started)
    print(text)
    for path in args.out:
        replace_section(path, text)


if __name__ == "__main__":
    main()
