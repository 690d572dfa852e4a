#!/usr/bin/env python3
"""Measures what a terminal and a message cost Redis in memory (MEMORY USAGE of real keys and
INFO memory, on a fleet of real processes), takes the CPU figures from BENCHMARKS.md, and writes
CAPACITY.md: the formulas, the figures, and what 1M, 10M and 50M terminals need.

  python3 scripts/capacity.py --bin .build/release/pushfleet     # `make capacity`
"""
import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench", os.path.join(HERE, "bench.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout.strip()


def used_memory(port):
    for line in redis_cli(port, "INFO", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def memory_usage(port, pattern):
    """(keys, bytes) of every key matching `pattern` (MEMORY USAGE ... SAMPLES 0: exact), in
    one redis-cli session."""
    keys = [k for k in redis_cli(port, "--scan", "--pattern", pattern).splitlines() if k]
    commands = "".join(f"MEMORY USAGE {key} SAMPLES 0\n" for key in keys)
    out = subprocess.run(["redis-cli", "-p", str(port)], input=commands, capture_output=True, text=True, check=True).stdout
    sizes = [int(line) for line in out.split() if line.isdigit()]
    assert len(sizes) == len(keys), f"MEMORY USAGE answered {len(sizes)} of {len(keys)} keys"
    return len(keys), sum(sizes)


def measure(binary, terminals, per_terminal, payload):
    """A fleet; `terminals` persistent terminals connect with credentials and go away; then
    `per_terminal` pushes each of `payload` bytes are stored for them. Memory per terminal and
    per stored message (its list entry, and its status)."""
    workdir = tempfile.mkdtemp(prefix="pushfleet-capacity-")
    server = bench.PushFleet(workdir, binary)
    port = server.redis_port
    try:
        time.sleep(0.5)
        base = used_memory(port)
        conn = [binary, "bench", "conn", "--count", str(terminals), "--prefix", "cap-", "--persistent", "--hold", "120",
                *server.terminal_args()]
        online = subprocess.Popen(conn, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        json.loads(online.stdout.readline())
        time.sleep(1)
        connected = used_memory(port)
        route_keys, route_bytes = memory_usage(port, "pushfleet:{t:cap-*}:route")
        session_keys, session_bytes = memory_usage(port, "pushfleet:{t:cap-*}:session")
        assert route_keys == terminals and session_keys == terminals, (route_keys, session_keys)
        online.terminate()
        online.wait(timeout=60)
        bench.wait_for(lambda: redis_cli(port, "EXISTS", "pushfleet:{t:cap-0}:route") == "0", what="terminals away")
        time.sleep(1)
        away = used_memory(port)
        messages = terminals * per_terminal
        pub = [binary, "bench", "pub", "--via", "api", "--api", f"http://127.0.0.1:{server.api_port}", "--targets", str(terminals),
               "--target-prefix", "cap-", "--messages", str(messages), "--qos", "1", "--rate", "0", "--seconds", "300",
               "--batch", "200", "--concurrency", "4", "--size", str(payload)]
        subprocess.run(pub, capture_output=True, text=True, timeout=600, check=True)
        time.sleep(1.5)
        stored = used_memory(port)
        queue_keys, queue_bytes = memory_usage(port, "pushfleet:{t:cap-*}:queue")
        status_keys, status_bytes = memory_usage(port, "pushfleet:{s:*}:status")
        entry = redis_cli(port, "LINDEX", "pushfleet:{t:cap-0}:queue", "0")
        # The terminals come back and acknowledge everything: what stays is the status, now
        # with each message's final state.
        sub = [binary, "bench", "sub", "--count", str(terminals), "--prefix", "cap-", "--qos", "1", "--expect", str(messages),
               "--seconds", "120", "--idle", "5", "--persistent", *server.terminal_args()]
        received = bench.last_json(subprocess.run(sub, capture_output=True, text=True, timeout=300).stdout)
        assert received["unique"] == messages, received
        bench.wait_for(lambda: redis_cli(port, "EXISTS", "pushfleet:{t:cap-0}:queue") == "0", what="lists emptied")
        time.sleep(1.5)
        _, delivered_status_bytes = memory_usage(port, "pushfleet:{s:*}:status")
        return {
            "terminals": terminals, "messages": messages, "payload_bytes": payload,
            "online_bytes_per_terminal": (connected - base) / terminals,
            "route_bytes": route_bytes / max(1, route_keys), "session_bytes": session_bytes / max(1, session_keys),
            "away_bytes_per_terminal": (away - base) / terminals,
            "stored_bytes_per_message": (stored - away) / messages,
            "queue_bytes_per_message": queue_bytes / messages, "status_bytes_per_message": status_bytes / messages,
            "delivered_status_bytes_per_message": delivered_status_bytes / messages,
            "entry_length": len(entry.encode()),
        }
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def from_benchmarks(path):
    """CPU figures per message and per connect from BENCHMARKS.md (`make bench`'s run records)."""
    text = open(path).read()
    runs = {}
    for line in text.splitlines():
        match = re.match(r"^(\S+) (PushFleet|Mosquitto) (\{.*\})$", line)
        if match:
            runs.setdefault((match.group(1), match.group(2)), []).append(json.loads(match.group(3)))

    def median(scenario, key):
        values = sorted(run[key] for run in runs.get((scenario, "PushFleet"), []) if key in run)
        return values[len(values) // 2] if values else None
    rss = median("a", "kib_per_connection")
    return {
        "redis_us_per_push": median("c", "redis_cpu_us_per_message"),
        "redis_us_per_stream_push": median("c-stream", "redis_cpu_us_per_message"),
        "fleet_us_per_push": median("c", "server_cpu_us_per_message"),
        "connects_per_second": median("b", "connects_per_second"),
        "node_kib_per_connection": rss,
    }


def write(out, figures, cpu, sizes, seconds):
    small, large = figures
    per_terminal_away = small["away_bytes_per_terminal"]
    per_terminal_online = small["online_bytes_per_terminal"]
    queue_small = small["queue_bytes_per_message"]
    status = small["status_bytes_per_message"]
    delivered_status = small["delivered_status_bytes_per_message"]
    lines = [
        "# Capacity",
        "",
        f"Written by `scripts/capacity.py` (`make capacity`) on {datetime.date.today().isoformat()} in {seconds / 60:.1f} minutes, "
        "from a fleet of real processes on this machine (Redis 7.0, one control node, one push node) and the CPU "
        "figures in BENCHMARKS.md. Redo them with your own numbers: every figure below is one line of arithmetic.",
        "",
        "## Measured",
        "",
        "Redis memory (`INFO memory` `used_memory` before and after, and `MEMORY USAGE ... SAMPLES 0` of the keys):",
        "",
        "| what | bytes |",
        "|---|---|",
        f"| a terminal connected (persistent session): route + session key and their share of Redis's tables | {per_terminal_online:.0f} |",
        f"| of which the route key (`MEMORY USAGE`) | {small['route_bytes']:.0f} |",
        f"| of which the session key | {small['session_bytes']:.0f} |",
        f"| a terminal away (its session kept, no route) | {per_terminal_away:.0f} |",
        f"| a stored message, {small['payload_bytes']}-byte payload (entry of {small['entry_length']} bytes), all of it | {small['stored_bytes_per_message']:.0f} |",
        f"| of which its entry in the terminal's list | {queue_small:.0f} |",
        f"| of which its status record | {status:.0f} |",
        f"| the status of a message delivered and acknowledged (record and final state, kept `--status-retention`, 7 days by default; what stays once the list is empty) | {small['delivered_status_bytes_per_message']:.0f} |",
        f"| a stored message, {large['payload_bytes']}-byte payload (entry of {large['entry_length']} bytes), all of it | {large['stored_bytes_per_message']:.0f} |",
        f"| of which its entry | {large['queue_bytes_per_message']:.0f} |",
        "",
        f"Sizes: {small['terminals']} terminals, {small['messages']} and {large['messages']} messages stored for them while they were away.",
        "",
        "CPU, from BENCHMARKS.md (`make bench`, medians):",
        "",
        "| what | figure |",
        "|---|---|",
        f"| Redis CPU per unicast QoS 1 push through the API, delivered and acknowledged | {cpu['redis_us_per_push']:.1f} us |",
        f"| the same through the command stream | {cpu['redis_us_per_stream_push']:.1f} us |",
        f"| whole fleet CPU per such push (Redis, control node, push node) | {cpu['fleet_us_per_push']:.1f} us |",
        f"| push node memory per idle connection | {cpu['node_kib_per_connection']:.2f} KiB |",
        f"| connects per second, one push node and its Redis, two shared cores | {cpu['connects_per_second']:.0f} |",
        "",
        "## Formulas",
        "",
        "With T terminals, a fraction `online` of them connected, P pushes per terminal per day, a peak of R pushes per "
        "second, `backlog` messages waiting per absent terminal on average, and status kept D days:",
        "",
        "- Redis memory = T x online x (connected terminal) + T x (1 - online) x (absent terminal) "
        "+ T x (1 - online) x backlog x (stored message, without its status) + T x P x D x (status of a delivered message).",
        "- Redis cores at the peak = R x (Redis CPU per push) / 0.7 (a shard run at 70% of its core). In Redis "
        "Cluster each shard is one core, so this is also the number of shards for throughput; memory may ask for more.",
        "- Push nodes = max(T x online / connections per node, R x (push node CPU per push) / (cores per node x 0.7)). "
        "Connections per node: its memory / (KiB per connection) and its file descriptor limit; `--max-connections` "
        "defaults to 200,000.",
        "- Reconnect storm: all terminals of a lost node reconnect elsewhere; at C connects per second per node "
        "(`--max-connect-rate` bounds it), a node's terminals are back in (connections per node) / (C x surviving nodes) seconds.",
        "",
        "## 1M, 10M, 50M terminals",
        "",
        "Assumptions (change them to yours): 80% online at the peak hour; 10 pushes per terminal per day; a peak of "
        "one push to every terminal within 10 minutes (a campaign); an absent terminal has 20 messages waiting on "
        "average; status kept 7 days; push nodes with 4 cores and 8 GiB holding 200,000 connections each; the "
        "push node's CPU per push is the fleet figure minus Redis's (the control node's share included, "
        "conservatively); Redis shards of one core and 24 GiB usable.",
        "",
        "| terminals | peak pushes/s | Redis memory | Redis shards (CPU) | Redis shards (memory) | push nodes |",
        "|---|---|---|---|---|---|",
    ]
    node_cpu = cpu["fleet_us_per_push"] - cpu["redis_us_per_push"]
    stored = small["stored_bytes_per_message"] - status
    for count in (1_000_000, 10_000_000, 50_000_000):
        online = 0.8
        peak = count / 600
        memory = (count * online * per_terminal_online + count * (1 - online) * per_terminal_away
                  + count * (1 - online) * 20 * stored + count * 10 * 7 * delivered_status)
        cpu_shards = peak * cpu["redis_us_per_push"] / 1e6 / 0.7
        memory_shards = memory / (24 * 2**30)
        nodes = max(count * online / 200_000, peak * node_cpu / 1e6 / (4 * 0.7))
        lines.append(f"| {count / 1e6:.0f}M | {peak:,.0f} | {memory / 2**30:,.1f} GiB | {max(1, cpu_shards):.1f} | "
                     f"{max(1, memory_shards):.1f} | {max(1, nodes):.0f} |")
    lines += [
        "",
        "Status records are the largest item at these sizes: 10 pushes a day kept 7 days is 70 status fields per "
        "terminal. `--status-retention` is the lever (1 day divides that part by 7).",
        "",
        "Redis Cluster: the section below (`make shards`) runs the same load on 1, 2 and 3 shards. The commands "
        "and Redis CPU of a push divide evenly over the shards (a terminal's keys hash to one slot, and terminals spread "
        "over all of them), so the shard counts above hold; in a cluster a push costs one command more (each target's "
        "route is one GET where one server takes a batch's routes in one MGET) at about the same Redis CPU. By its CPU "
        f"per push one Redis core run at 70% carries about {0.7e6 / cpu['redis_us_per_push']:,.0f} pushes a second; this "
        "machine (two cores shared by the whole fleet and the load) never got one that far, so take it as the ceiling "
        "it is.",
        "",
        "## Commands",
        "",
        "```",
        "python3 scripts/capacity.py --bin .build/release/pushfleet",
        "```",
        "",
        "Raw figures:",
        "",
        "```",
        json.dumps({"small": small, "large": large, "cpu": cpu}, indent=1, sort_keys=True),
        "```",
        "",
    ]
    text = bench.with_kept_sections(out, "\n".join(lines))
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--terminals", type=int, default=2000)
    parser.add_argument("--per-terminal", type=int, default=10)
    parser.add_argument("--benchmarks", default=os.path.join(HERE, "..", "BENCHMARKS.md"))
    parser.add_argument("--out", default="CAPACITY.md")
    args = parser.parse_args()
    started = time.time()
    cpu = from_benchmarks(args.benchmarks)
    if None in cpu.values():
        sys.exit(f"capacity: BENCHMARKS.md lacks figures ({cpu}); run make bench first")
    small = measure(args.bin, args.terminals, args.per_terminal, 64)
    large = measure(args.bin, args.terminals, args.per_terminal, 1024)
    write(args.out, (small, large), cpu, None, time.time() - started)


if __name__ == "__main__":
    main()
