#!/usr/bin/env python3
"""Fault suite: real processes are killed under load and every accepted message is accounted for.

Each scenario starts its own fleet (redis-server with AOF, two control nodes, two push nodes,
haproxy in front of both), connects terminals through haproxy (paho-mqtt, MQTT 5, reconnecting
on their own), pushes at a steady rate, injects one fault, then waits for delivery and prints:
accepted, delivered, lost, duplicated, and whether the message status counts agree with what
the terminals counted.

  python3 Tests/e2e/fault.py --bin .build/debug/pushfleet                    # CI size
  python3 Tests/e2e/fault.py --bin ... --terminals 300 --rate 150 --seconds 30   # larger

paho-mqtt's select() loop limits one process to about 330 terminals (descriptors < 1024).

Scenarios: push-node-kill, control-node-kill, redis-restart, rolling-restart, sentinel-failover,
cluster-master-kill, cluster-reshard, slow-terminal, reconnect-storm. With
PUSHFLEET_E2E_REDIS=cluster in the environment every scenario runs on a Redis Cluster (3
masters, 3 replicas), except sentinel-failover.
"""
import argparse
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import defaultdict

import paho.mqtt.client as mqtt

from fleet import Fleet, RawMQTT, free_port, wait_for


class Terminals:
    """Terminals that count what they receive, by message id (MQTT 5 user property)."""

    def __init__(self, fleet, count, prefix):
        self.fleet = fleet
        self.ids = [f"{prefix}-{i}" for i in range(count)]
        self.received = defaultdict(list)  # terminal -> [message ids in arrival order]
        self.lock = threading.Lock()
        self.clients = []
        self.disconnects = 0

    def start(self):
        for terminal in self.ids:
            password = self.fleet.credential(terminal)
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=terminal, protocol=mqtt.MQTTv5)
            client.username_pw_set(terminal, password)
            client.reconnect_delay_set(min_delay=0.2, max_delay=1)
            client.on_message = self._on_message(terminal)
            client.on_disconnect = self._on_disconnect
            client.connect_async("127.0.0.1", self.fleet.lb_mqtt, keepalive=10)
            client.loop_start()
            self.clients.append(client)
        try:
            wait_for(lambda: online_count(self.fleet, self.ids) == len(self.ids), timeout=30, what="all terminals online")
        except AssertionError:
            online = online_count(self.fleet, self.ids)
            connected = sum(1 for c in self.clients if c.is_connected())
            raise AssertionError(f"{online} of {len(self.ids)} terminals online, {connected} clients connected")

    def _on_message(self, terminal):
        def handler(client, userdata, message):
            ids = [value for key, value in (message.properties.UserProperty or []) if key == "message-id"]
            with self.lock:
                self.received[terminal].append(ids[0] if ids else message.payload.decode())
        return handler

    def _on_disconnect(self, *args):
        with self.lock:
            self.disconnects += 1

    def stop(self):
        for client in self.clients:
            client.disconnect()
            client.loop_stop()

    def snapshot(self):
        with self.lock:
            return {t: list(ids) for t, ids in self.received.items()}


def online_count(fleet, terminals):
    """How many of `terminals` have a route (a session on some node)."""
    return sum(line == "1" for line in fleet.redis_lines([["EXISTS", f"pushfleet:{{t:{t}}}:route"] for t in terminals]))


def routes_on_node(fleet, node, terminals):
    """How many of `terminals` are connected to `node`."""
    return sum(line.split("|")[0] == node for line in fleet.redis_lines([["GET", f"pushfleet:{{t:{t}}}:route"] for t in terminals]))


class Load:
    """Pushes one message to a random terminal every 1/rate seconds, through the API (with an
    idempotency key, retried until it is accepted or refused for good) or the command stream."""

    def __init__(self, fleet, terminals, rate, via="api"):
        self.fleet, self.terminals, self.rate, self.via = fleet, terminals, rate, via
        self.accepted = {}  # message id -> terminal
        self.refused = 0  # 503 answers (retried)
        self.running = False
        self.thread = None
        self.redis = None

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False
        self.thread.join()

    def _run(self):
        sequence = 0
        next_at = time.time()
        while self.running:
            terminal = random.choice(self.terminals)
            sequence += 1
            if self.via == "api":
                self._push_api(terminal, sequence)
            else:
                self._push_stream(terminal, sequence)
            next_at += 1.0 / self.rate
            time.sleep(max(0.0, next_at - time.time()))

    def _push_api(self, terminal, sequence):
        key = str(uuid.uuid4())
        for _ in range(100):
            try:
                status, body = self.fleet.api("POST", "/v1/push", {"to": [terminal], "payload": f"m{sequence}", "qos": 1,
                                                                   "ttl": 600, "idempotencyKey": key})
            except OSError:
                status, body = None, None
            if status == 202:
                self.accepted[body["id"]] = terminal
                return
            if status == 503:
                self.refused += 1
            time.sleep(0.1)

    def _push_stream(self, terminal, sequence):
        for _ in range(100):
            try:
                if self.redis is None:
                    self.redis = socket.create_connection(("127.0.0.1", self.fleet.redis_port), timeout=5)
                args = ["XADD", "pushfleet:push", "*", "to", terminal, "payload", f"m{sequence}", "ttl", "600"]
                self.redis.sendall(resp(args))
                reply = self.redis.recv(1024).decode()
                if reply.startswith("$"):
                    self.accepted[reply.split("\r\n")[1]] = terminal
                    return
            except OSError:
                self.redis = None
            time.sleep(0.1)


def resp(args):
    out = f"*{len(args)}\r\n"
    for arg in args:
        out += f"${len(arg.encode())}\r\n{arg}\r\n"
    return out.encode()


def account(fleet, load, terminals, settle):
    """Waits up to `settle` seconds for every accepted message, then counts."""
    def missing():
        got = terminals.snapshot()
        seen = {(t, m) for t, ids in got.items() for m in ids}
        return [m for m, t in load.accepted.items() if (t, m) not in seen]
    deadline = time.time() + settle
    while missing() and time.time() < deadline:
        time.sleep(0.5)
    got = terminals.snapshot()
    received = sum(len(ids) for ids in got.values())
    unique = {(t, m) for t, ids in got.items() for m in ids}
    delivered = sum(1 for m, t in load.accepted.items() if (t, m) in unique)
    duplicated = received - len(unique)
    for message_id, terminal in load.accepted.items():
        if (terminal, message_id) not in unique:
            # Say where a lost message is, for the next one who reads a red run.
            stored = fleet.redis_cli("LRANGE", f"pushfleet:{{t:{terminal}}}:queue", "0", "-1")
            route = fleet.redis_cli("GET", f"pushfleet:{{t:{terminal}}}:route")
            print(f"lost {message_id} for {terminal}: still stored={message_id in stored}, route={route!r}", file=sys.stderr)
    # Status records: each message has one target, which must show acknowledged.
    time.sleep(1)
    disagree = 0
    for message_id, terminal in load.accepted.items():
        status, body = fleet.api("GET", f"/v1/messages/{message_id}")
        if status != 200 or body["acknowledged"] != 1 or body["terminals"].get(terminal) != "acknowledged":
            disagree += 1
    return {"accepted": len(load.accepted), "delivered": delivered, "lost": len(load.accepted) - delivered,
            "duplicated": duplicated, "status_disagree": disagree, "refused_503": load.refused,
            "reconnects": terminals.disconnects}


def run_with_load(args, name, fault, via="api", control_args=(), node_args=(), sentinel=False, cluster=None):
    fleet = Fleet(args.bin, controls=2, nodes=2, control_args=control_args, node_args=node_args, sentinel=sentinel, cluster=cluster)
    try:
        fleet.start_all()
        terminals = Terminals(fleet, args.terminals, name)
        terminals.start()
        load = Load(fleet, terminals.ids, args.rate, via=via)
        load.start()
        time.sleep(args.seconds / 3)
        fault(fleet)
        time.sleep(args.seconds * 2 / 3)
        load.stop()
        result = account(fleet, load, terminals, settle=30)
        terminals.stop()
        return result
    finally:
        fleet.stop_all()


def push_node_kill(args):
    def fault(fleet):
        held = routes_on_node(fleet, "n1", [f"kill-{i}" for i in range(args.terminals)])
        assert held > 0, "no terminal on the node to kill"
        fleet.kill("node1", signal.SIGKILL)
    return run_with_load(args, "kill", fault)


def control_node_kill(args):
    def fault(fleet):
        fleet.kill("control1", signal.SIGKILL)
    # Entries the dead consumer had read are claimed after 2 s of idleness.
    return run_with_load(args, "ctl", fault, via="stream", control_args=["--claim-idle", "2"])


def redis_restart(args):
    def fault(fleet):
        fleet.kill("redis", signal.SIGTERM)  # AOF is written on shutdown
        time.sleep(2)
        fleet.start_redis()
    return run_with_load(args, "redis", fault)


def sentinel_failover(args):
    """The Redis master is killed (SIGKILL) under load and stays dead; Sentinel promotes its
    replica, every node follows, and a new replica joins the new master. The control nodes run
    with --durability replica: every push they accepted was on the replica already."""
    def fault(fleet):
        fleet.kill("redis", signal.SIGKILL)
        wait_for(lambda: fleet.sentinel_master() == (fleet.replica_port, False), timeout=30, what="sentinel failover")
        # The accounting reads the new master from here on.
        fleet.redis_port = fleet.replica_port
        # A new replica, as an operator replaces the lost server (bringing the old master back
        # instead races Sentinel, which converts it only at its next checks). Until it is in
        # sync the API answers 503 (no replica confirms) and the load retries.
        directory = os.path.join(fleet.dir, "replica2")
        os.makedirs(directory, exist_ok=True)
        fleet.start("replica2", ["redis-server", "--port", str(free_port()), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
                                 "--appendonly", "yes", "--appendfsync", "everysec", "--replicaof", "127.0.0.1", str(fleet.redis_port)])
        wait_for(lambda: "state=online" in fleet.redis_cli("INFO", "replication"), timeout=30, what="a new replica in sync")
    return run_with_load(args, "sentinel", fault, control_args=["--durability", "replica"], sentinel=True)


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout


def cluster_ok(fleet, ports):
    """Every server in `ports` says the cluster is ok."""
    for port in ports:
        info = subprocess.run(["redis-cli", "-p", str(port), "CLUSTER", "INFO"], capture_output=True, text=True).stdout
        if "cluster_state:ok" not in info:
            return False
    return True


def cluster_master_kill(args):
    """Redis Cluster (3 masters, 3 replicas): the master the nodes were pointed at is killed
    (SIGKILL) under load; its replica is promoted, every node follows the new slot map, and the
    killed server comes back as a replica. The control nodes run with --durability replica:
    every push they accepted was on a replica already."""
    def fault(fleet):
        victim = fleet.cluster_masters()[0]
        name = fleet.cluster_server_name(fleet.cluster_ports.index(victim))
        # Its replica, by the victim's node id in CLUSTER NODES (`<id> <addr> <flags> <master id> ...`).
        nodes = [line.split() for line in redis_cli(victim, "CLUSTER", "NODES").splitlines()]
        victim_id = next(fields[0] for fields in nodes if "myself" in fields[2])
        replica = next(int(fields[1].split(":")[1].split("@")[0]) for fields in nodes if fields[3] == victim_id)
        fleet.kill(name, signal.SIGKILL)
        others = [p for p in fleet.cluster_ports if p != victim]
        # Promoted by the cluster (its replica says it is a master now), and every other server
        # agrees: only then is the victim started again, as a replica of its successor. (The
        # slot map alone once looked right before any failover, and the victim came back as the
        # master it had been.)
        wait_for(lambda: "role:master" in redis_cli(replica, "INFO", "replication") and victim not in fleet.cluster_masters()
                 and cluster_ok(fleet, others), timeout=30, what="the victim's replica promoted")
        # Back as a replica of its successor (its nodes.conf says so); until it is in sync,
        # that shard has no replica, and the API answers 503 (the load retries).
        fleet.restart(name)
        wait_for(lambda: "master_link_status:up" in subprocess.run(["redis-cli", "-p", str(victim), "INFO", "replication"],
                                                                   capture_output=True, text=True).stdout,
                 timeout=60, what="the killed master back as a replica")
    return run_with_load(args, "cmk", fault, control_args=["--durability", "replica"], cluster=True)


def cluster_reshard(args):
    """Redis Cluster: 2,000 slots move from one master to another under load (`redis-cli
    --cluster reshard`, keys migrated while pushes, acknowledgements and connects use them)."""
    def fault(fleet):
        nodes = subprocess.run(["redis-cli", "-p", str(fleet.live_redis_port()), "CLUSTER", "NODES"], capture_output=True,
                               text=True).stdout.splitlines()
        masters = sorted((line.split()[1].split("@")[0], line.split()[0]) for line in nodes if "master" in line.split()[2])
        (source_address, source), (_, target) = masters[0], masters[1]
        subprocess.run(["redis-cli", "--cluster", "reshard", source_address, "--cluster-from", source, "--cluster-to", target,
                        "--cluster-slots", str(args.reshard_slots), "--cluster-yes"], check=True, capture_output=True, timeout=120)
    return run_with_load(args, "reshard", fault, cluster=True)


def rolling_restart(args):
    def fault(fleet):
        for node in ["node1", "node2"]:
            assert fleet.kill(node, signal.SIGTERM) == 0
            fleet.restart(node)
            time.sleep(2)
    return run_with_load(args, "roll", fault)


def slow_terminal(args):
    """A terminal that never reads while large messages are pushed to it: node memory stays bounded."""
    fleet = Fleet(args.bin, controls=2, nodes=2)
    try:
        fleet.start_all()
        client = RawMQTT(fleet.node_ports[0])
        assert client.connect("sloth", fleet.credential("sloth"), keepalive=0)[1][1] == 0
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_for(lambda: fleet.redis_cli("EXISTS", "pushfleet:{t:sloth}:route") == "1", what="sloth online")
        before = fleet.rss_kib("node1")
        payload = "x" * 60_000
        pushed = 0
        for index in range(args.slow_messages):
            qos, ttl = (0, 0) if index % 2 else (1, 600)
            status, _ = fleet.api("POST", "/v1/push", {"to": ["sloth"], "payload": payload, "qos": qos, "ttl": ttl})
            pushed += status == 202
        time.sleep(2)
        after = fleet.rss_kib("node1")
        queued = fleet.api("GET", "/v1/terminals/sloth")[1]["queued"]
        client.close()
        return {"accepted": pushed, "pushed_mib": round(pushed * 60_000 / 2**20, 1), "rss_before_mib": round(before / 1024, 1),
                "rss_after_mib": round(after / 1024, 1), "growth_mib": round((after - before) / 1024, 1), "still_queued": queued}
    finally:
        fleet.stop_all()


def reconnect_storm(args):
    """Many terminals CONNECT at the same instant to a node whose connect rate is limited:
    every one is served (the limiter delays registrations instead of refusing them), and each
    gets the message stored for it while it was away."""
    fleet = Fleet(args.bin, controls=2, nodes=2, node_args=["--max-connect-rate", str(args.storm_rate)])
    try:
        fleet.start_all()
        ids = [f"storm-{i}" for i in range(args.storm)]
        passwords = {t: fleet.credential(t) for t in ids}
        for t in ids:
            assert fleet.api("POST", "/v1/push", {"to": [t], "payload": f"for {t}"})[0] == 202
        started = time.time()
        clients = []
        for t in ids:
            client = RawMQTT(fleet.node_ports[0])
            body = RawMQTT.string("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big") + RawMQTT.string(t) + RawMQTT.string(t) + RawMQTT.string(passwords[t])
            client.sock.sendall(RawMQTT.packet(0x10, body))
            clients.append((t, client))
        accepted = served = 0
        for t, client in clients:
            try:
                connack = client.read()
                accepted += connack == (0x20, b"\x00\x00")
                publish = client.read() if connack == (0x20, b"\x00\x00") else None
                served += publish is not None and publish[1].endswith(f"for {t}".encode())
            except OSError as error:
                print(f"{t}: {error}; route={fleet.redis_cli('GET', f'pushfleet:{{t:{t}}}:route')!r} "
                      f"queued={fleet.redis_cli('LLEN', f'pushfleet:{{t:{t}}}:queue')}", flush=True)
        elapsed = time.time() - started
        for _, client in clients:
            client.close()
        return {"terminals": args.storm, "connect_rate_limit": args.storm_rate, "accepted": accepted,
                "got_stored_message": served, "seconds": round(elapsed, 2)}
    finally:
        fleet.stop_all()


def accounted(result, duplicates_allowed=True):
    """Nothing accepted was lost (or, when asked, duplicated), the statuses agree, and the
    load got through at all: a scenario that accepted nothing proves nothing."""
    return (result["accepted"] > 0 and result["lost"] == 0 and result["status_disagree"] == 0
            and (duplicates_allowed or result["duplicated"] == 0))


SCENARIOS = {
    "push-node-kill": (push_node_kill, accounted),
    "control-node-kill": (control_node_kill, accounted),
    "redis-restart": (redis_restart, accounted),
    "rolling-restart": (rolling_restart, lambda r: accounted(r, duplicates_allowed=False)),
    "sentinel-failover": (sentinel_failover, accounted),
    "cluster-master-kill": (cluster_master_kill, accounted),
    "cluster-reshard": (cluster_reshard, accounted),
    "slow-terminal": (slow_terminal, lambda r: r["growth_mib"] < 64 and r["accepted"] > 0),
    "reconnect-storm": (reconnect_storm, lambda r: 0 < r["accepted"] == r["terminals"] == r["got_stored_message"]),
}


def run_scenario(name, args, results):
    try:
        results.put(SCENARIOS[name][0](args))
    except Exception:
        traceback.print_exc()
        results.put({"error": "see traceback"})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--terminals", type=int, default=20)
    parser.add_argument("--rate", type=float, default=25, help="pushes per second")
    parser.add_argument("--seconds", type=float, default=9, help="load duration per scenario")
    parser.add_argument("--slow-messages", type=int, default=400)
    parser.add_argument("--storm", type=int, default=1500, help="terminals in the reconnect storm")
    parser.add_argument("--storm-rate", type=int, default=500, help="the node's --max-connect-rate in the storm")
    parser.add_argument("--reshard-slots", type=int, default=2000, help="slots moved in cluster-reshard")
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = parser.parse_args()
    failed = []
    rows = []
    # Each scenario runs in its own process: paho keeps descriptors open after a client
    # stops, and its select() loop cannot use descriptors past 1024.
    context = multiprocessing.get_context("fork")
    for name in args.scenarios:
        _, ok = SCENARIOS[name]
        started = time.time()
        results = context.Queue()
        child = context.Process(target=run_scenario, args=(name, args, results))
        child.start()
        child.join()
        result = results.get() if not results.empty() else {"error": f"exit code {child.exitcode}"}
        passed = "error" not in result and ok(result)
        rows.append((name, passed, time.time() - started, result))
        print(f"{'PASS' if passed else 'FAIL'} {name}: {result}", flush=True)
        if not passed:
            failed.append(name)
    print()
    print(f"{'scenario':<18} {'result':<6} {'secs':>5}  figures")
    for name, passed, seconds, result in rows:
        figures = "  ".join(f"{k}={v}" for k, v in result.items())
        print(f"{name:<18} {'ok' if passed else 'FAIL':<6} {seconds:>5.0f}  {figures}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
