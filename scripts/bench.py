#!/usr/bin/env python3
"""Benchmarks PushFleet and Mosquitto side by side on this machine, in one run, and writes
BENCHMARKS.md.

Every scenario runs against both systems with the same load tool (`pushfleet bench`), each
`--runs` times on a freshly started server; the report gives medians and the ratio
PushFleet / Mosquitto. Only loopback addresses are used.

PushFleet: redis-server (AOF, appendfsync everysec), one control node, one push node; terminals
present credentials, pushes go through the control API's batch endpoint and are stored in
Redis until acknowledged. Mosquitto 2.0: anonymous clients, publisher -> subscriber over MQTT.

Usage: python3 scripts/bench.py [--bin .build/release/pushfleet] [--runs 3] [--quick]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "e2e"))
from fleet import free_port, wait_for, wait_port  # noqa: E402

SECRET = "bench-secret-of-32-bytes-for-runs"
# The issue 13 latency target: p99 at this many unicast QoS 1 pushes a second.
STEADY_RATE = 10_000


def with_kept_sections(path, text):
    """`text`, followed by the sections another script keeps in `path` (between its
    `<!-- name: ... -->` and `<!-- /name -->` markers: scripts/shards.py's), so rewriting a
    report does not lose them."""
    if not os.path.exists(path):
        return text
    content = open(path).read()
    begin = "<!-- shards: "
    if begin not in content or "<!-- /shards -->" not in content:
        return text
    kept = begin + content.split(begin, 1)[1].split("<!-- /shards -->", 1)[0] + "<!-- /shards -->"
    return text.rstrip("\n") + "\n\n" + kept + "\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    """User + system CPU of a process so far, in clock ticks (1/100 s)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def command_calls(redis_port):
    """Calls per command since the last CONFIG RESETSTAT (`INFO commandstats`, Lua's inner
    calls included), without the measurement's own INFO and CONFIG."""
    out = subprocess.run(["redis-cli", "-p", str(redis_port), "INFO", "commandstats"], capture_output=True, text=True,
                         timeout=10).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, stats = line[len("cmdstat_"):].split(":", 1)
            fields = dict(item.split("=") for item in stats.split(","))
            if name not in ("info", "config"):
                calls[name] = int(fields["calls"])
    return calls


class CostMeter:
    """What delivering costs the servers: CPU of every server process (PushFleet: redis-server,
    control node, push node; Mosquitto: mosquitto) and, for PushFleet, Redis commands. The
    load tool is not counted for either. Started before the messages are sent, read once the
    subscribers have them and the fleet has finished with them."""

    def __init__(self, server):
        self.server = server
        self.pids = server.cost_pids()
        if isinstance(server, PushFleet):
            subprocess.run(["redis-cli", "-p", str(server.redis_port), "CONFIG", "RESETSTAT"], capture_output=True, timeout=10)
        self.start = {name: cpu_ticks(pid) for name, pid in self.pids.items()}

    def settle(self, timeout=10.0):
        """Waits until the fleet has finished with the messages the subscribers have: their
        acknowledgements and the states behind them reach Redis a little after the last
        delivery (the subscribers' last PUBACKs, states held for a tick). Done when Redis sees
        fewer than 20 commands in 250 ms (liveness and sweeps go on)."""
        if not isinstance(self.server, PushFleet):
            return
        deadline = time.time() + timeout
        last = sum(command_calls(self.server.redis_port).values())
        while time.time() < deadline:
            time.sleep(0.25)
            now = sum(command_calls(self.server.redis_port).values())
            if now - last < 20:
                return
            last = now

    def per_message(self, delivered):
        """Per delivered message: server CPU in microseconds (all of it, and Redis's), Redis
        commands; read once the fleet has settled."""
        self.settle()
        used = {name: cpu_ticks(pid) - self.start[name] for name, pid in self.pids.items()}
        delivered = max(1, delivered)
        cost = {"server_cpu_us_per_message": sum(used.values()) * 10_000 / delivered}
        if isinstance(self.server, PushFleet):
            calls = command_calls(self.server.redis_port)
            cost["redis_cpu_us_per_message"] = used["redis"] * 10_000 / delivered
            # The load's own XADDs (command stream runs) are not the fleet's commands; their
            # Redis CPU is in the figure above.
            cost["redis_commands_per_message"] = sum(v for k, v in calls.items() if k != "xadd") / delivered
            cost["redis_commands"] = calls
        return cost


def summary_then_cost(sub, meter, timeout=600):
    """Reads a lingering subscriber's summary line, then what the servers spent (its
    terminals still connected, so their sessions' teardown is not counted), then stops it."""
    deadline = time.time() + timeout
    line = ""
    while time.time() < deadline:
        line = sub.stdout.readline()
        if not line or line.startswith("{"):
            break
    if not line.startswith("{"):
        raise RuntimeError("the subscriber ended without a summary")
    summary = json.loads(line)
    cost = meter.per_message(summary["unique"])
    sub.terminate()
    sub.wait(timeout=30)
    return summary, cost


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no summary line in: {text[-500:]}")


class Mosquitto:
    name = "Mosquitto"

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                    "max_inflight_messages 64\npersistence false\nlog_type error\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    @property
    def server_pid(self):
        return self.proc.pid

    def cost_pids(self):
        return {"mosquitto": self.proc.pid}

    def terminal_args(self, unicast_topic=True, topic=None):
        if topic:
            return ["--port", str(self.port), "--topic", topic]
        return ["--port", str(self.port)] + (["--topic", "bench/%i"] if unicast_topic else [])

    def publish_args(self, binary, prefix, targets, messages, qos, rate, topic=None, steady=False, stream=False):
        return [binary, "bench", "pub", "--via", "mqtt", "--port", str(self.port), "--targets", str(targets),
                "--topic", topic or "bench/%i", "--messages", str(messages), "--qos", str(qos), "--rate", str(rate),
                "--seconds", "300", "--publishers", "4"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)


class PushFleet:
    name = "PushFleet"

    def __init__(self, workdir, binary, replica=False):
        """`replica`: a second redis-server replicating the first, and the control node run
        with `--durability replica` (a push is accepted once the replica has it)."""
        self.workdir = workdir
        self.redis_port = free_port()
        self.api_port = free_port()
        self.port = free_port()
        self.procs = []
        self.replica = None
        self.procs.append(self.start_redis(workdir, self.redis_port, ["--repl-diskless-sync-delay", "0"]))
        redis = f"redis://127.0.0.1:{self.redis_port}"
        if replica:
            replica_dir = os.path.join(workdir, "replica")
            os.makedirs(replica_dir)
            self.replica = self.start_redis(replica_dir, free_port(), ["--replicaof", "127.0.0.1", str(self.redis_port)])
            wait_for(lambda: "state=online" in subprocess.run(["redis-cli", "-p", str(self.redis_port), "INFO", "replication"],
                                                              capture_output=True, text=True).stdout, what="replica in sync")
        log = open(os.path.join(workdir, "pushfleet.log"), "a")
        env = dict(os.environ, PUSHFLEET_SECRET=SECRET, PUSHFLEET_LOG_LEVEL="warning")
        durability = ["--durability", "replica"] if replica else []
        self.procs.append(subprocess.Popen([binary, "control", "--redis", redis, "--listen", f"127.0.0.1:{self.api_port}", *durability],
                                           stdout=log, stderr=log, env=env))
        self.node = subprocess.Popen([binary, "node", "--redis", redis, "--mqtt", f"127.0.0.1:{self.port}", "--node-id", "b1",
                                      "--max-connect-rate", "0", "--public-topics", "bench/#"],
                                     stdout=log, stderr=log, env=env)
        self.procs.append(self.node)
        wait_port(self.api_port)
        wait_port(self.port)

    @staticmethod
    def start_redis(directory, port, extra):
        log = os.path.join(directory, "redis.log")
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--lazyfree-lazy-expire", "yes", "--logfile", log, *extra])
        wait_for(lambda: os.path.exists(log) and "Ready to accept" in open(log).read(), what="redis-server")
        return proc

    @property
    def server_pid(self):
        return self.node.pid

    def cost_pids(self):
        pids = {"redis": self.procs[0].pid, "control": self.procs[1].pid, "node": self.node.pid}
        if self.replica:
            pids["replica"] = self.replica.pid
        return pids

    def terminal_args(self, unicast_topic=True, topic=None):
        return ["--port", str(self.port), "--secret", SECRET] + (["--topic", topic] if topic else [])

    def publish_args(self, binary, prefix, targets, messages, qos, rate, topic=None, steady=False, stream=False):
        """`steady`: a paced stream as an integrating service sends it (batches of 10, 8 in
        flight), for latency; else batches of 200 (20 topic pushes), 4 in flight, for throughput.
        `stream`: `XADD pushfleet:push` instead of the API, pipelines of 200, one in flight."""
        if stream:
            return [binary, "bench", "pub", "--via", "stream", "--redis", f"redis://127.0.0.1:{self.redis_port}", "--targets",
                    str(targets), "--target-prefix", prefix, "--messages", str(messages), "--qos", str(qos), "--rate", str(rate),
                    "--seconds", "300", "--batch", "200"]
        batch, concurrency = ("10", "8") if steady else ("20" if topic else "200", "4")
        args = [binary, "bench", "pub", "--via", "api", "--api", f"http://127.0.0.1:{self.api_port}", "--targets", str(targets),
                "--target-prefix", prefix, "--messages", str(messages), "--qos", str(qos), "--rate", str(rate),
                "--seconds", "300", "--batch", batch, "--concurrency", concurrency]
        return args + (["--topic-push", topic] if topic else [])

    def stop(self):
        procs = self.procs + ([self.replica] if self.replica else [])
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Bench:
    def __init__(self, args):
        self.args = args
        self.binary = os.path.abspath(args.bin)
        self.results = {}  # scenario -> system -> [run results]
        self.commands = {}

    def system(self, kind, workdir):
        return PushFleet(workdir, self.binary) if kind == "PushFleet" else Mosquitto(workdir)

    def record(self, scenario, system, result):
        self.results.setdefault(scenario, {}).setdefault(system, []).append(result)
        print(f"  {scenario} {system}: {result}", flush=True)

    def connections(self, count):
        """Scenarios a and b: open `count` idle terminals as fast as possible, hold them."""
        for run in range(self.args.runs):
            for kind in ("PushFleet", "Mosquitto"):
                workdir = tempfile.mkdtemp(prefix="pushfleet-bench-")
                server = self.system(kind, workdir)
                try:
                    time.sleep(0.5)
                    before = rss_kib(server.server_pid)
                    command = [self.binary, "bench", "conn", "--count", str(count), "--prefix", f"idle{run}-",
                               "--hold", "3", *server.terminal_args(unicast_topic=False)]
                    self.commands.setdefault("a/b", {})[kind] = command
                    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                    summary = json.loads(proc.stdout.readline())
                    time.sleep(1.5)
                    after = rss_kib(server.server_pid)
                    proc.wait(timeout=60)
                    self.record("a", kind, {"kib_per_connection": (after - before) / count, "connected": summary["connected"],
                                            "rss_before_mib": before / 1024, "rss_after_mib": after / 1024})
                    self.record("b", kind, {"connects_per_second": summary["connectsPerSecond"], "connected": summary["connected"],
                                            "failed": summary["failed"]})
                finally:
                    server.stop()
                    shutil.rmtree(workdir, ignore_errors=True)

    def delivery(self, scenario, kind, run, terminals, messages, qos, rate, fanout_topic=None, steady=False, stream=False,
                 replica=False):
        """One run: `terminals` subscribers, `messages` published (to distinct terminals, or
        to one topic all of them subscribe to), measured at the subscribers."""
        workdir = tempfile.mkdtemp(prefix="pushfleet-bench-")
        server = PushFleet(workdir, self.binary, replica=True) if replica else self.system(kind, workdir)
        prefix = f"{scenario}{run}-"
        try:
            ready = os.path.join(workdir, "ready")
            expect = messages * (terminals if fanout_topic else 1)
            sub_command = [self.binary, "bench", "sub", "--count", str(terminals), "--prefix", prefix, "--qos", str(max(qos, 1)),
                           "--expect", str(expect), "--seconds", "240", "--idle", "8", "--ready-file", ready, "--linger", "30",
                           *server.terminal_args(unicast_topic=True, topic=fanout_topic)]
            sub = subprocess.Popen(sub_command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            wait_for(lambda: os.path.exists(ready), timeout=120, what="subscribers connected")
            time.sleep(1.0)
            targets = 1 if fanout_topic else terminals
            pub_command = server.publish_args(self.binary, prefix, targets, messages, qos, rate, topic=fanout_topic, steady=steady,
                                              stream=stream)
            self.commands.setdefault(scenario, {})[kind] = (sub_command, pub_command)
            meter = CostMeter(server)
            pub = subprocess.run(pub_command, capture_output=True, text=True, timeout=600)
            sent = last_json(pub.stdout)["sent"] * (terminals if fanout_topic else 1)
            summary, cost = summary_then_cost(sub, meter)
            result = {"messages_per_second": summary["messagesPerSecond"], "p50_ms": summary["p50Ms"], "p99_ms": summary["p99Ms"],
                      "max_ms": summary["maxMs"], "sent": sent, "unique": summary["unique"],
                      "lost": max(0, sent - summary["unique"]), "duplicated": summary["duplicates"]}
            result.update(cost)
            self.record(scenario, kind, result)
            return result
        finally:
            if sub.poll() is None:
                sub.kill()
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def backlog_scenario(bench, kind, run, terminals, per_terminal):
    """g. `terminals` terminals, each with `per_terminal` messages waiting for it (PushFleet:
    pushed to the terminals while they were offline; Mosquitto: published to their persistent
    sessions while they were away), reconnect at once: the time from the first connection
    attempt until every message was delivered."""
    workdir = tempfile.mkdtemp(prefix="pushfleet-bench-")
    server = bench.system(kind, workdir)
    prefix = f"g{run}-"
    messages = terminals * per_terminal
    persistent = ["--persistent"] if kind == "Mosquitto" else []
    try:
        terminal_args = server.terminal_args(unicast_topic=True)
        if kind == "Mosquitto":
            # Persistent sessions subscribed to bench/<i>, then away.
            away = [bench.binary, "bench", "conn", "--count", str(terminals), "--prefix", prefix, *persistent, *terminal_args]
            subprocess.run(away, capture_output=True, text=True, timeout=120, check=True)
        pub_command = server.publish_args(bench.binary, prefix, terminals, messages, 1, 0)
        # From the push (stored, or queued in Mosquitto's sessions) to the last delivery.
        meter = CostMeter(server)
        pub = subprocess.run(pub_command, capture_output=True, text=True, timeout=600)
        sent = last_json(pub.stdout)["sent"]
        time.sleep(1.0)
        sub_command = [bench.binary, "bench", "sub", "--count", str(terminals), "--prefix", prefix, "--qos", "1",
                       "--expect", str(messages), "--seconds", "300", "--idle", "10", "--linger", "30", *persistent, *terminal_args]
        bench.commands.setdefault("g", {})[kind] = (pub_command, sub_command)
        sub = subprocess.Popen(sub_command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        summary, cost = summary_then_cost(sub, meter)
        seconds = summary["sinceStartSeconds"]
        result = {"seconds_until_all": seconds, "messages_per_second": summary["unique"] / seconds if seconds else 0,
                  "sent": sent, "unique": summary["unique"], "lost": max(0, sent - summary["unique"]),
                  "duplicated": summary["duplicates"]}
        result.update(cost)
        bench.record("g", kind, result)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def fleet_scenario(bench, nodes=5, per_node=19000):
    """f. `nodes` push nodes holding `per_node` terminals each (one load process and one
    source address per node, under the 20,000 files a process may hold), then one broadcast
    push: memory of every process, and the time until the last terminal has the message."""
    workdir = tempfile.mkdtemp(prefix="pushfleet-bench-")
    binary = bench.binary
    procs = []
    try:
        redis_port, api_port = free_port(), free_port()
        redis_log = os.path.join(workdir, "redis.log")
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", workdir,
                                       "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--lazyfree-lazy-expire", "yes", "--logfile", redis_log,
                                       "--maxclients", "1000"]))
        wait_for(lambda: os.path.exists(redis_log) and "Ready to accept" in open(redis_log).read(), what="redis-server")
        redis = f"redis://127.0.0.1:{redis_port}"
        log = open(os.path.join(workdir, "pushfleet.log"), "a")
        env = dict(os.environ, PUSHFLEET_SECRET=SECRET, PUSHFLEET_LOG_LEVEL="warning")
        procs.append(subprocess.Popen([binary, "control", "--redis", redis, "--listen", f"127.0.0.1:{api_port}"], stdout=log,
                                      stderr=log, env=env))
        ports = [free_port() for _ in range(nodes)]
        node_procs = []
        for index, port in enumerate(ports):
            node_procs.append(subprocess.Popen([binary, "node", "--redis", redis, "--mqtt", f"127.0.0.1:{port}", "--node-id",
                                                f"f{index}", "--max-connect-rate", "0"], stdout=log, stderr=log, env=env))
        procs += node_procs
        for port in [api_port, *ports]:
            wait_port(port)
        started = time.time()
        subs = []
        for index, port in enumerate(ports):
            ready = os.path.join(workdir, f"ready{index}")
            command = [binary, "bench", "sub", "--port", str(port), "--count", str(per_node), "--start", str(index * per_node),
                       "--prefix", "f-", "--secret", SECRET, "--sources", f"127.0.0.{index + 2}", "--expect", str(per_node),
                       "--connect-rate", "800", "--seconds", "600", "--idle", "15", "--ready-file", ready]
            bench.commands.setdefault("f", {})[f"terminals {index}"] = command
            subs.append((ready, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)))
        for ready, _ in subs:
            wait_for(lambda: os.path.exists(ready), timeout=600, what="terminals connected")
        connect_seconds = time.time() - started
        connected = sum(int(open(ready).read()) for ready, _ in subs)
        time.sleep(3)
        node_rss = [rss_kib(p.pid) / 1024 for p in node_procs]
        redis_rss = rss_kib(procs[0].pid) / 1024
        push = [binary, "bench", "pub", "--via", "api", "--api", f"http://127.0.0.1:{api_port}", "--broadcast",
                "--messages", "1", "--batch", "1", "--concurrency", "1", "--qos", "1"]
        bench.commands["f"]["broadcast"] = push
        subprocess.run(push, capture_output=True, text=True, timeout=120, check=True)
        summaries = [last_json(proc.communicate(timeout=900)[0]) for _, proc in subs]
        received = sum(s["unique"] for s in summaries)
        result = {"terminals": connected, "connect_seconds": connect_seconds, "node_rss_mib": node_rss,
                  "node_rss_total_mib": sum(node_rss), "redis_rss_mib": redis_rss, "received": received,
                  "lost": connected - received, "duplicated": sum(s["duplicates"] for s in summaries),
                  "last_terminal_ms": max(s["maxMs"] for s in summaries), "p50_ms": median([s["p50Ms"] for s in summaries])}
        bench.record("f", "PushFleet", result)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def median(values):
    return statistics.median(values) if values else float("nan")


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = int(open("/proc/meminfo").readline().split()[1]) // (1024 * 1024)

    def version(command):
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception:
            return "unknown"

    return {"cpu": f"{os.cpu_count()} x {model}", "memory": f"{memory} GiB", "kernel": platform.release(),
            "mosquitto": version(["mosquitto", "-h"]), "redis": version(["redis-server", "--version"]),
            "swift": version(["swift", "--version"])}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=".build/release/pushfleet")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for trying the script")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args()
    for tool in ["mosquitto", "redis-server"]:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (scripts/deps test installs it)")
    bench = Bench(args)
    idle = 2000 if args.quick else 10000
    unicast_terminals = 2000 if args.quick else 10000
    unicast_messages = 20000 if args.quick else 60000
    fanout_terminals = 1000
    fanout_messages = 50 if args.quick else 200
    backlog_terminals = 1000
    backlog_per_terminal = 20 if args.quick else 100
    started = time.time()

    print("a/b: idle terminals, connects per second", flush=True)
    bench.connections(idle)
    for scenario, qos in (("c", 1), ("d", 0)):
        print(f"{scenario}: unicast QoS {qos} at saturation", flush=True)
        for run in range(args.runs):
            for kind in ("Mosquitto", "PushFleet"):
                bench.delivery(scenario, kind, run, unicast_terminals, unicast_messages, qos, 0)
    print("c-stream: unicast QoS 1 at saturation through the command stream (XADD)", flush=True)
    for run in range(args.runs):
        bench.delivery("c-stream", "PushFleet", run, unicast_terminals, unicast_messages, 1, 0, stream=True)
    print("c-replica: c with a Redis replica and --durability replica", flush=True)
    for run in range(args.runs):
        bench.delivery("c-replica", "PushFleet", run, unicast_terminals, unicast_messages, 1, 0, replica=True)
    saturation = median([r["messages_per_second"] for r in bench.results["c"]["Mosquitto"]])
    half = max(100, int(saturation / 2))
    print(f"c-latency: unicast QoS 1 at {half} msg/s (half Mosquitto's saturation)", flush=True)
    for run in range(args.runs):
        for kind in ("Mosquitto", "PushFleet"):
            bench.delivery("c-latency", kind, run, unicast_terminals, half * (4 if args.quick else 8), 1, half, steady=True)
    print(f"c-10k: unicast QoS 1 at {STEADY_RATE} msg/s", flush=True)
    for run in range(args.runs):
        for kind in ("Mosquitto", "PushFleet"):
            bench.delivery("c-10k", kind, run, unicast_terminals, STEADY_RATE * (4 if args.quick else 8), 1, STEADY_RATE, steady=True)
    print("e: fan-out of one topic", flush=True)
    for run in range(args.runs):
        for kind in ("Mosquitto", "PushFleet"):
            bench.delivery("e", kind, run, fanout_terminals, fanout_messages, 1, 0, fanout_topic="bench/all")

    print(f"g: {backlog_terminals} terminals with {backlog_per_terminal} messages waiting each reconnect at once", flush=True)
    for run in range(args.runs):
        for kind in ("Mosquitto", "PushFleet"):
            backlog_scenario(bench, kind, run, backlog_terminals, backlog_per_terminal)

    if not args.quick:
        print("f: five push nodes, 95,000 terminals, one broadcast", flush=True)
        fleet_scenario(bench)
    write_report(args, bench, machine(), time.time() - started, half,
                 {"idle": idle, "unicast_terminals": unicast_terminals, "unicast_messages": unicast_messages,
                  "fanout_terminals": fanout_terminals, "fanout_messages": fanout_messages,
                  "backlog_terminals": backlog_terminals, "backlog_per_terminal": backlog_per_terminal})


def f_report(runs):
    if not runs:
        return ["f. (five push nodes, ~95,000 terminals) was not run (`--quick`)."]
    f = runs[0]
    return [
        "f. Five push nodes on this machine holding "
        f"{f['terminals']} terminals with credentials (connected in {f['connect_seconds']:.0f} s, one load process and "
        f"source address per node): push nodes' RSS {f['node_rss_total_mib']:.0f} MiB in all "
        f"({', '.join(f'{m:.0f}' for m in f['node_rss_mib'])} MiB), redis-server {f['redis_rss_mib']:.0f} MiB. One broadcast push "
        f"reached {f['received']} of them (lost {f['lost']}, duplicated {f['duplicated']}); the last one had it "
        f"{f['last_terminal_ms']:.0f} ms after the push was sent (median per process of p50: {f['p50_ms']:.0f} ms). "
        "Mosquitto is not run here: one process holds at most 20,000 connections on this machine.",
    ]


def cost_report(r):
    """What one delivered message costs the servers, per scenario (medians)."""
    lines = [
        "## Cost per delivered message",
        "",
        "Server CPU from `/proc/<pid>/stat` (PushFleet: redis-server + control node + push node; "
        "Mosquitto: mosquitto; the load tool is not counted), from just before the push until the "
        "last delivery has been acknowledged and recorded; Redis commands from `INFO commandstats` after `CONFIG RESETSTAT` (every command any "
        "fleet process sent, and those Lua scripts ran).",
        "",
        "| scenario | Redis commands | Redis CPU | PushFleet CPU | Mosquitto CPU | ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, label in (("c", "c. unicast QoS 1"), ("c-stream", "c-stream. unicast QoS 1, command stream (Mosquitto: c)"),
                            ("c-replica", "c-replica. c with `--durability replica`; Redis CPU: the master's, PushFleet CPU: with the replica's (Mosquitto: c)"),
                            ("d", "d. unicast QoS 0"), ("e", "e. fan-out"), ("g", "g. backlogs on reconnect")):
        pushfleet = [run for run in r.get(scenario, {}).get("PushFleet", []) if "server_cpu_us_per_message" in run]
        broker_scenario = "c" if scenario in ("c-stream", "c-replica") else scenario
        mosquitto = [run for run in r.get(broker_scenario, {}).get("Mosquitto", []) if "server_cpu_us_per_message" in run]
        if not pushfleet or not mosquitto:
            continue
        commands = median([run["redis_commands_per_message"] for run in pushfleet])
        redis_cpu = median([run["redis_cpu_us_per_message"] for run in pushfleet])
        fleet = median([run["server_cpu_us_per_message"] for run in pushfleet])
        broker = median([run["server_cpu_us_per_message"] for run in mosquitto])
        ratio = fleet / broker if broker else float("nan")
        target = ""
        if scenario in ("c", "c-stream"):
            target = (f"<= 5 commands: {'met' if commands <= 5 else 'not met'}; <= 12 us: {'met' if redis_cpu <= 12 else 'not met'}; "
                      f"<= 2.5x: {'met' if ratio <= 2.5 else 'not met'}")
        lines.append(f"| {label} | {commands:.1f} | {redis_cpu:.1f} us | {fleet:.1f} us | {broker:.1f} us | {ratio:.2f}x | {target} |")
    for scenario in ("c", "c-stream"):
        unicast = [run for run in r.get(scenario, {}).get("PushFleet", []) if "redis_commands" in run]
        if unicast:
            run = unicast[len(unicast) // 2]
            delivered = max(1, run["unique"])
            top = sorted(run["redis_commands"].items(), key=lambda item: -item[1])
            lines += ["", f"Redis commands per delivered message in scenario {scenario}, by command (one run"
                      f"{'; xadd is the load tool' + chr(39) + 's own, not counted above' if scenario == 'c-stream' else ''}): " +
                      ", ".join(f"{name} {calls / delivered:.2f}" for name, calls in top if calls / delivered >= 0.01) + "."]
    return lines


def write_report(args, bench, info, seconds, half, sizes):
    r = bench.results

    def med(scenario, system, key):
        return median([run[key] for run in r.get(scenario, {}).get(system, [])])

    def total(scenario, system, key):
        return sum(run[key] for run in r.get(scenario, {}).get(system, []))

    def row(label, scenario, key, unit, higher_is_better=True, target=None, fmt="{:.0f}"):
        p, m = med(scenario, "PushFleet", key), med(scenario, "Mosquitto", key)
        ratio = p / m if m else float("nan")
        met = ""
        if target is not None:
            met = "met" if (ratio >= target if higher_is_better else ratio <= target) else "not met"
        return f"| {label} | {fmt.format(p)} {unit} | {fmt.format(m)} {unit} | {ratio:.2f}x | {target_text(target, higher_is_better)} {met} |"

    def stream_row(label, key, unit, scenario="c-stream"):
        p, m = med(scenario, "PushFleet", key), med("c", "Mosquitto", key)
        return f"| {label} | {p:.0f} {unit} | {m:.0f} {unit} | {p / m if m else float('nan'):.2f}x |  |"

    def target_text(target, higher):
        if target is None:
            return ""
        return f"{'>=' if higher else '<='} {target}x:"

    p99 = med("c-latency", "PushFleet", "p99_ms")
    p99_steady = med("c-10k", "PushFleet", "p99_ms")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `scripts/bench.py` (`make bench`) on {datetime.date.today().isoformat()}; "
        f"{args.runs} runs per system and scenario, each on a freshly started server, the two systems' runs "
        f"alternated (so both meet the same spells of load from the machine's other tenants); medians; "
        f"ratio = PushFleet / Mosquitto. The whole run took {seconds / 60:.1f} minutes.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
        "This machine is shared and noisy: read ratios and orders of magnitude, not the last digit.",
        "The load tool (`pushfleet bench`, release build) runs on the same 2 cores as the servers.",
        "",
        "## What runs",
        "",
        "- **PushFleet**: redis-server (AOF, `appendfsync everysec`), one control node, one push node "
        "(release build). Terminals log in with credentials (HMAC checked, session registered in "
        "Redis). Unicast messages are pushed through `POST /v1/push/batch` (200 per request, 4 in "
        "flight), stored in each terminal's Redis list, delivered, and removed on PUBACK; c-stream "
        "pushes the same through the command stream instead (`XADD pushfleet:push`, pipelines of 200, "
        "as `redis-cli` users do); the fan-out is a topic push (20 per request) through the fleet index.",
        "- **Mosquitto**: anonymous clients, `max_inflight_messages 64`, no persistence. Unicast: 4 "
        "MQTT publishers, each terminal subscribed to its own topic `bench/<i>`; fan-out: one topic.",
        "- Delivered msg/s is counted at the subscribers: distinct messages over the time from the "
        "first to the last one. Latency is from the publisher's send (API request built, or MQTT "
        "PUBLISH written) to the subscriber's receipt.",
        "",
        "## Results",
        "",
        "| scenario | PushFleet | Mosquitto | ratio | target |",
        "|---|---|---|---|---|",
        row(f"a. RSS per idle connection ({sizes['idle']} terminals)", "a", "kib_per_connection", "KiB",
            higher_is_better=False, target=3, fmt="{:.2f}"),
        row(f"b. connects per second ({sizes['idle']}; PushFleet with credentials)", "b", "connects_per_second", "/s", target=1.0),
        row(f"c. unicast QoS 1, {sizes['unicast_terminals']} terminals, delivered", "c", "messages_per_second", "msg/s", target=1.0),
        stream_row(f"c-stream. unicast QoS 1 through the command stream (`XADD`), delivered; Mosquitto's from c", "messages_per_second",
                   "msg/s"),
        stream_row("c-replica. c with a Redis replica and `--durability replica`, delivered; Mosquitto's from c",
                   "messages_per_second", "msg/s", scenario="c-replica"),
        row(f"d. unicast QoS 0, {sizes['unicast_terminals']} terminals, delivered", "d", "messages_per_second", "msg/s", target=1.0),
        row(f"c. p99 latency at {half} msg/s (half Mosquitto's QoS 1 saturation)", "c-latency", "p99_ms", "ms",
            higher_is_better=False, fmt="{:.1f}"),
        row(f"c. p99 latency at {STEADY_RATE} msg/s", "c-10k", "p99_ms", "ms", higher_is_better=False, fmt="{:.1f}"),
        row(f"e. fan-out to {sizes['fanout_terminals']} terminals, deliveries", "e", "messages_per_second", "/s", target=1.5),
        row(f"g. {sizes['backlog_terminals']} terminals with {sizes['backlog_per_terminal']} messages waiting each reconnect "
            "at once: time until all delivered", "g", "seconds_until_all", "s", higher_is_better=False, fmt="{:.1f}"),
        "",
        f"p99 latency targets: PushFleet <= 10 ms at half Mosquitto's saturation: "
        f"{'met' if p99 <= 10 else 'not met'} ({p99:.1f} ms); <= 10 ms at {STEADY_RATE} msg/s: "
        f"{'met' if p99_steady <= 10 else 'not met'} ({p99_steady:.1f} ms). The latency runs push a paced "
        "stream in batches of 10 (8 requests in flight), as a service integrating the API would; the "
        "throughput runs push batches of 200.",
        "",
        *f_report(r.get("f", {}).get("PushFleet", [])),
        "",
        *cost_report(r),
        "",
        "## Lost and duplicated",
        "",
        "| scenario | system | sent | received (distinct) | lost | duplicated |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in ("c", "c-stream", "c-replica", "d", "c-latency", "c-10k", "e", "g"):
        for system in ("PushFleet", "Mosquitto"):
            if r.get(scenario, {}).get(system):
                lines.append(f"| {scenario} | {system} | {total(scenario, system, 'sent')} | {total(scenario, system, 'unique')} | "
                             f"{total(scenario, system, 'lost')} | {total(scenario, system, 'duplicated')} |")
    lines += ["", "QoS 0 may lose messages by definition (Mosquitto drops QoS 0 beyond its queue).", "",
              "## Every run", "", "```"]
    for scenario, systems in r.items():
        for system, runs in systems.items():
            for run in runs:
                lines.append(f"{scenario} {system} {json.dumps(run, sort_keys=True)}")
    lines += ["```", "", "## Commands", "", "```"]
    for scenario, systems in bench.commands.items():
        for system, command in systems.items():
            commands = command if isinstance(command, tuple) else (command,)
            for c in commands:
                lines.append(f"{scenario} {system}: " + " ".join(os.path.basename(a) if a == bench.binary else a for a in c))
    lines += ["```", ""]
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-notes.md")
    if os.path.exists(notes):
        lines += [open(notes).read()]
    text = with_kept_sections(args.out, "\n".join(lines))
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
