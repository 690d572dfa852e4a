#!/usr/bin/env python3
"""Delivery at the sizes terminals meet: backlogs of thousands, pushes faster than
acknowledgements, readers that pause, takeovers while pushes flow, expiry, revocation.

One fleet of real processes (redis-server, a control node, two push nodes, haproxy) with
`--queue-cap 6000` so a terminal can be away for 5,000 pushes. Clients: mosquitto_sub, paho
(MQTT 3.1.1 and 5.0 with a small receive maximum) and a byte-level client where DUP flags and
withheld acknowledgements matter.

Usage: python3 Tests/e2e/delivery.py --bin .build/debug/pushfleet [-k NAME]
"""
import argparse
import http.client
import json
import queue
import shutil
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet import Fleet, RawMQTT, parse_publish, run_suite, wait_for

BACKLOG = 5000
CAP = 6000


def push_batch(fleet, bodies):
    """Pushes `bodies` through POST /v1/push/batch, 1,000 a call, in order; returns the ids."""
    ids = []
    for start in range(0, len(bodies), 1000):
        status, answer = fleet.api("POST", "/v1/push/batch", {"messages": bodies[start:start + 1000]})
        assert status == 202, (status, answer)
        for result in answer["results"]:
            assert "id" in result, result
            ids.append(result["id"])
    return ids


def queued(fleet, terminal):
    return int(fleet.redis_cli("LLEN", f"pushfleet:{{t:{terminal}}}:queue"))


def route_node(fleet, terminal):
    """The node in the terminal's route (`node|epoch|connectedAt`), "" when it has none."""
    return fleet.redis_cli("GET", f"pushfleet:{{t:{terminal}}}:route").split("|")[0]


def redis_pipe(fleet, lines):
    """Sends redis-cli commands, one a line, in order on one connection."""
    subprocess.run(["redis-cli", *(["-c"] if fleet.cluster else []), "-p", str(fleet.redis_port)], input="\n".join(lines) + "\n", text=True, capture_output=True,
                   check=True)


def leave_persistent_session(fleet, terminal, topic, qos):
    """Connects `terminal` with clean session off, subscribes `topic` at `qos`, and leaves."""
    client = Paho(fleet, fleet.node_ports[0], terminal, clean=False)
    assert client.subscribe(topic, qos) == [qos]
    client.close()
    wait_for(lambda: not route_node(fleet, terminal), what=f"{terminal} offline")


def store_in_order(fleet, terminal, count, **extra):
    """Stores pushes m0..m{count-1} for `terminal` in this order: through the command stream,
    which the control node handles in stream order for any one terminal (a batch API call
    stores its pushes concurrently)."""
    qos = extra.get("qos", 1)
    redis_pipe(fleet, [f"XADD pushfleet:push * to {terminal} payload m{i} ttl 3600 qos {qos}" for i in range(count)])
    wait_for(lambda: queued(fleet, terminal) == count, timeout=60, what=f"{count} stored for {terminal}")


class Paho:
    """A paho client recording messages (payload, qos, dup) in a queue."""

    def __init__(self, fleet, port, terminal, v5=False, clean=True, receive_maximum=None, session_expiry=None):
        self.messages = queue.Queue()
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=terminal, protocol=protocol,
                                  clean_session=None if v5 else clean, reconnect_on_failure=False)
        self.client.username_pw_set(terminal, fleet.credential(terminal))
        self.client.on_message = lambda c, u, m: self.messages.put((m.payload.decode(), m.qos, m.dup))
        self.subacks = {}
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.__setitem__(mid, [int(x.value) for x in codes])
        connected = threading.Event()
        self.client.on_connect = lambda c, u, flags, code, props: connected.set()
        kwargs = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if receive_maximum:
                props.ReceiveMaximum = receive_maximum
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
            kwargs = {"clean_start": clean, "properties": props}
        if receive_maximum:
            self.client.max_inflight_messages_set(receive_maximum)
        self.client.connect("127.0.0.1", port, 60, **kwargs)
        self.client.loop_start()
        assert connected.wait(10), f"{terminal}: no CONNACK"

    def subscribe(self, topic, qos):
        result, mid = self.client.subscribe(topic, qos)
        return wait_for(lambda: self.subacks.get(mid), what="SUBACK")

    def take(self, count, timeout):
        got = []
        deadline = time.time() + timeout
        while len(got) < count and time.time() < deadline:
            try:
                got.append(self.messages.get(timeout=max(0.01, deadline - time.time())))
            except queue.Empty:
                break
        return got

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def expected(count):
    return [f"m{i}" for i in range(count)]


# ------------------------------------------------------------------------ backlogs

def test_offline_terminal_gets_a_backlog_of_5000_in_order_with_mosquitto_sub(fleet):
    # MQTT 3.1.1 with clean session off, and MQTT 5 (mosquitto_sub's receive maximum is 20).
    for terminal, version, count in (("bl-mosq", ["-V", "mqttv311", "-c"], BACKLOG), ("bl-mosq5", ["-V", "mqttv5"], 2000)):
        credential = fleet.credential(terminal)
        store_in_order(fleet, terminal, count)
        out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(fleet.node_ports[0]), "-i", terminal, "-u", terminal,
                              "-P", credential, "-t", f"push/{terminal}", "-q", "1", *version, "-C", str(count), "-W", "90"],
                             capture_output=True, text=True)
        lines = out.stdout.splitlines()
        missing = next((i for i, line in enumerate(expected(count)) if i >= len(lines) or lines[i] != line), None)
        assert lines == expected(count), f"{terminal}: {len(lines)} arrived, first missing: m{missing}"
        wait_for(lambda: queued(fleet, terminal) == 0, timeout=20, what="list drained")


def test_pushes_stored_during_a_long_drain_arrive_after_it_in_order_and_once(fleet):
    store_in_order(fleet, "bl-more", 3000)
    client = Paho(fleet, fleet.node_ports[0], "bl-more", v5=True, receive_maximum=5)
    first = client.take(100, timeout=30)
    # The drain has begun; 500 more are stored (and announced by wake events) meanwhile.
    redis_pipe(fleet, [f"XADD pushfleet:push * to bl-more payload m{i} ttl 3600" for i in range(3000, 3500)])
    rest = client.take(3400, timeout=90)
    client.close()
    payloads = [payload for payload, _, _ in first + rest]
    assert payloads == expected(3500), f"{len(payloads)} arrived, {len(set(payloads))} distinct"


def test_mqtt5_terminal_with_receive_maximum_7_gets_a_backlog_of_5000_in_order(fleet):
    store_in_order(fleet, "bl-v5", BACKLOG)
    client = Paho(fleet, fleet.node_ports[1], "bl-v5", v5=True, clean=False, receive_maximum=7, session_expiry=600)
    got = client.take(BACKLOG, timeout=90)
    client.close()
    assert [payload for payload, _, _ in got] == expected(BACKLOG), f"{len(got)} arrived"
    wait_for(lambda: queued(fleet, "bl-v5") == 0, timeout=20, what="list drained")


def test_qos2_backlog_of_5000_arrives_in_order_through_an_explicit_subscription_kept_with_the_session(fleet):
    leave_persistent_session(fleet, "bl-q2", "push/bl-q2", 2)
    store_in_order(fleet, "bl-q2", BACKLOG, qos=2)
    # Reconnect on the other node, without subscribing again: the QoS 2 subscription is the session's.
    again = Paho(fleet, fleet.node_ports[1], "bl-q2", clean=False)
    got = again.take(BACKLOG, timeout=120)
    again.close()
    assert [payload for payload, _, _ in got] == expected(BACKLOG), f"{len(got)} arrived"
    assert {qos for _, qos, _ in got} == {2}, "delivered at the subscription's QoS 2"
    wait_for(lambda: queued(fleet, "bl-q2") == 0, timeout=20, what="list drained")


def test_persistent_session_gets_a_topic_backlog_of_5000_in_order(fleet):
    leave_persistent_session(fleet, "bl-topic", "news/a", 1)
    time.sleep(0.3)
    redis_pipe(fleet, [f"XADD pushfleet:push * topic news/a payload m{i} qos 1 ttl 3600" for i in range(BACKLOG)])
    wait_for(lambda: queued(fleet, "bl-topic") == BACKLOG, timeout=60, what="topic backlog stored")
    again = Paho(fleet, fleet.node_ports[1], "bl-topic", clean=False)
    got = again.take(BACKLOG, timeout=90)
    again.close()
    assert [payload for payload, _, _ in got] == expected(BACKLOG), f"{len(got)} arrived"


def test_a_reconnect_in_the_middle_of_a_drain_continues_where_it_stopped_with_dup_for_the_unacknowledged(fleet):
    password = fleet.credential("bl-mid")
    store_in_order(fleet, "bl-mid", BACKLOG)
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("bl-mid", password, clean=False)[1][1] == 0
    received = []
    while len(received) < 1000:
        publish = parse_publish(*client.read())
        received.append(publish)
        if len(received) <= 990:
            client.puback(publish["id"])
    # The last ten are received and not acknowledged; more may be in flight.
    time.sleep(0.3)
    client.close()
    assert [p["payload"].decode() for p in received] == expected(1000)
    wait_for(lambda: not route_node(fleet, "bl-mid"), what="bl-mid offline")
    again = RawMQTT(fleet.node_ports[1])
    assert again.connect("bl-mid", password, clean=False)[1][1] == 0
    rest = []
    while len(rest) < BACKLOG - 990:
        publish = parse_publish(*again.read())
        rest.append(publish)
        again.puback(publish["id"])
    payloads = [p["payload"].decode() for p in rest]
    assert payloads == expected(BACKLOG)[990:], "continues at the first unacknowledged one, in order, nothing lost"
    dups = [p["dup"] for p in rest]
    assert all(dups[:10]), "received and unacknowledged: DUP"
    assert dups == sorted(dups, reverse=True), "only the redeliveries, at the front, carry DUP"
    by_payload = {p["payload"]: p["id"] for p in received}
    assert all(p["id"] == by_payload[p["payload"]] for p in rest[:10]), "redelivered with their packet ids"
    wait_for(lambda: queued(fleet, "bl-mid") == 0, timeout=20, what="list drained")
    again.close()


# ------------------------------------------------------------- faster than acknowledgements

def test_online_terminal_gets_5000_pushes_sent_by_batch(fleet):
    credential = fleet.credential("on-batch")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(fleet.lb_mqtt), "-i", "on-batch", "-u", "on-batch",
                            "-P", credential, "-t", "push/on-batch", "-q", "1", "-C", str(BACKLOG), "-W", "90"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: route_node(fleet, "on-batch"), what="on-batch online")
    push_batch(fleet, [{"to": ["on-batch"], "payload": f"m{i}"} for i in range(BACKLOG)])
    out, _ = sub.communicate(timeout=120)
    lines = out.splitlines()
    # A batch stores its pushes concurrently: all of them, in any order within a batch.
    assert sorted(lines) == sorted(expected(BACKLOG)), f"{len(lines)} distinct {len(set(lines))}"
    wait_for(lambda: queued(fleet, "on-batch") == 0, timeout=20, what="list drained")


def test_a_reader_that_pauses_while_5000_pushes_arrive_gets_all_of_them_when_it_reads_again(fleet):
    password = fleet.credential("pause-1")
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("pause-1", password)[1][1] == 0
    wait_for(lambda: route_node(fleet, "pause-1"), what="pause-1 online")
    # Not reading: what the node sends fills the socket buffers, the window fills, the rest waits.
    push_batch(fleet, [{"to": ["pause-1"], "payload": f"m{i}"} for i in range(BACKLOG)])
    time.sleep(1)
    seen = set()
    deadline = time.time() + 90
    while len(seen) < BACKLOG and time.time() < deadline:
        publish = parse_publish(*client.read())
        seen.add(publish["payload"].decode())
        client.puback(publish["id"])
    assert seen == set(expected(BACKLOG)), f"{len(seen)} arrived"
    wait_for(lambda: queued(fleet, "pause-1") == 0, timeout=20, what="list drained")
    client.close()


def test_a_reader_that_pauses_until_its_socket_is_full_gets_every_stored_qos0_push_when_it_reads_again(fleet):
    """QoS 0 entries do not wait for acknowledgements: what stops the node is the socket
    (8 KiB payloads fill the buffers), and it resumes when the terminal reads again."""
    password = fleet.credential("pause-0")
    client = RawMQTT(fleet.node_ports[1])
    assert client.connect("pause-0", password)[1][1] == 0
    wait_for(lambda: route_node(fleet, "pause-0"), what="pause-0 online")
    count, filler = 2000, "x" * 8192
    push_batch(fleet, [{"to": ["pause-0"], "payload": f"m{i}:{filler}", "qos": 0} for i in range(count)])
    wait_for(lambda: 0 < queued(fleet, "pause-0"), timeout=10, what="the node stopped with entries left")
    time.sleep(1)
    left = queued(fleet, "pause-0")
    assert left > 0, "the socket never filled: the test does not test the pause"
    seen = set()
    deadline = time.time() + 60
    while len(seen) < count and time.time() < deadline:
        publish = parse_publish(*client.read())
        assert publish["qos"] == 0
        seen.add(publish["payload"].decode().split(":")[0])
    assert seen == set(expected(count)), f"{len(seen)} arrived ({left} were waiting while the reader paused)"
    wait_for(lambda: queued(fleet, "pause-0") == 0, timeout=20, what="list drained")
    client.close()


# ------------------------------------------------------------------------ takeover

def takeovers(fleet, terminal, count, level):
    """`count` connections of `terminal`, alternating between the nodes, each opened while the
    one before is still open and reading, with a push every 20 ms: no push may arrive twice
    without DUP, and every push arrives."""
    password = fleet.credential(terminal)
    stop = threading.Event()
    pushed = []

    def pusher():
        index = 0
        while not stop.is_set() and index < 3000:
            status, _ = fleet.api("POST", "/v1/push", {"to": [terminal], "payload": f"p{index}"})
            if status == 202:
                pushed.append(f"p{index}")
            index += 1
            time.sleep(0.02)

    receipts = []  # (payload, dup, connection number)
    lock = threading.Lock()

    def reader(client, number):
        """Reads and acknowledges until the server closes the connection."""
        client.sock.settimeout(15)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                packet = client.read()
            except OSError:
                return
            if packet is None:
                return
            if packet[0] >> 4 == 3:
                publish = parse_publish(*packet, level=level)
                with lock:
                    receipts.append((publish["payload"].decode(), publish["dup"], number))
                try:
                    client.puback(publish["id"])
                except OSError:
                    return

    thread = threading.Thread(target=pusher)
    thread.start()
    readers = []
    try:
        for number in range(count):
            client = RawMQTT(fleet.node_ports[number % 2])
            props = b"\x11\x00\x00\x02\x58" if level == 5 else b""  # session expiry 600 s
            connack = client.connect(terminal, password, clean=False, level=level, props=props)
            assert connack[1][1] == 0, f"takeover {number} refused: {connack}"
            reading = threading.Thread(target=reader, args=(client, number))
            reading.start()
            readers.append((reading, client))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    # The last connection drains what is left.
    wait_for(lambda: queued(fleet, terminal) == 0, timeout=30, what="list drained by the last connection")
    readers[-1][1].close()
    for reading, _ in readers:
        reading.join(timeout=20)
    plain = {}
    for payload, dup, number in receipts:
        if not dup:
            plain.setdefault(payload, []).append(number)
    twice = {payload: numbers for payload, numbers in plain.items() if len(numbers) > 1}
    assert not twice, f"received twice without DUP: {dict(list(twice.items())[:5])}"
    assert set(pushed) <= {payload for payload, _, _ in receipts}, "every push arrived"


def test_100_takeovers_across_two_nodes_under_pushes_give_no_duplicate_without_dup(fleet):
    takeovers(fleet, "takeover-1", 100, level=4)


def test_50_mqtt5_takeovers_across_two_nodes_under_pushes_give_no_duplicate_without_dup(fleet):
    takeovers(fleet, "takeover-5", 50, level=5)


def test_a_route_left_by_a_dead_node_does_not_delay_the_connack(fleet):
    """A takeover waits for the old connection to stop, but not for a node nobody hears."""
    fleet.redis_cli("SET", "pushfleet:{t:ghosted}:route", "ghost|e-old|1")
    password = fleet.credential("ghosted")
    client = RawMQTT(fleet.node_ports[0])
    started = time.time()
    assert client.connect("ghosted", password)[1][1] == 0
    waited = time.time() - started
    client.close()
    assert waited < 1.0, f"CONNACK after {waited:.1f} s"


# ---------------------------------------------------------------- credentials, expiry

def test_revoke_then_issue_200_times_never_refuses_the_new_credential(fleet):
    # One kept-alive connection straight to the control node: the issue follows the
    # revocation within the same millisecond more often than not.
    api = http.client.HTTPConnection("127.0.0.1", fleet.control_port, timeout=10)
    body = json.dumps({"terminal": "rev-1"})
    refused = []
    for attempt in range(200):
        api.request("DELETE", "/v1/credentials/rev-1")
        answer = api.getresponse()
        answer.read()
        assert answer.status == 204
        api.request("POST", "/v1/credentials", body, {"Content-Type": "application/json"})
        answer = api.getresponse()
        password = json.loads(answer.read())["password"]
        client = RawMQTT(fleet.node_ports[attempt % 2])
        connack = client.connect("rev-1", password)
        client.close()
        if connack != (0x20, b"\x00\x00"):
            refused.append((attempt, connack))
    api.close()
    assert not refused, f"new credential refused in {len(refused)} of 200: {refused[:3]}"


def test_a_push_whose_ttl_passes_while_the_terminal_is_away_ends_expired(fleet):
    # Never comes back.
    status, away = fleet.api("POST", "/v1/push", {"to": ["exp-away"], "payload": "late", "ttl": 1})
    assert status == 202
    # Comes back after the ttl.
    status, back = fleet.api("POST", "/v1/push", {"to": ["exp-back"], "payload": "late", "ttl": 1})
    assert status == 202
    time.sleep(1.5)
    body = fleet.api("GET", f"/v1/messages/{away['id']}")[1]
    assert body["terminals"] == {"exp-away": "expired"} and body["expired"] == 1 and body["queued"] == 0, body
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("exp-back", fleet.credential("exp-back"))[1][1] == 0
    client.sock.settimeout(1)
    try:
        packet = client.read()
        assert packet is None or packet[0] >> 4 != 3, "an expired push is not delivered"
    except TimeoutError:
        pass
    client.close()
    body = fleet.api("GET", f"/v1/messages/{back['id']}")[1]
    assert body["terminals"] == {"exp-back": "expired"} and body["expired"] == 1 and body["queued"] == 0, body


def test_explicit_broadcast_subscription_at_qos0_is_kept_with_the_session(fleet):
    leave_persistent_session(fleet, "keep-bc", "broadcast", 0)
    again = Paho(fleet, fleet.node_ports[1], "keep-bc", clean=False)
    wait_for(lambda: route_node(fleet, "keep-bc") == "n2", what="keep-bc on n2")
    fleet.api("POST", "/v1/push", {"broadcast": True, "payload": "to-all", "qos": 1})
    got = again.take(1, timeout=10)
    again.close()
    assert got and got[0][:2] == ("to-all", 0), got


def test_a_revoked_mqtt5_connection_is_closed_with_administrative_action(fleet):
    password = fleet.credential("rev-5")
    client = RawMQTT(fleet.node_ports[1])
    assert client.connect("rev-5", password, level=5)[1][1] == 0
    wait_for(lambda: route_node(fleet, "rev-5"), what="rev-5 online")
    assert fleet.api("DELETE", "/v1/credentials/rev-5")[0] == 204
    packet = client.read()
    assert packet is not None and packet[0] == 0xE0 and packet[1][0] == 0x98, packet
    client.close()


# ------------------------------------------------------------------------ status

def test_status_of_topic_and_broadcast_pushes_says_where_they_went(fleet):
    clients = []
    for index in range(20):
        client = RawMQTT(fleet.node_ports[index % 2])
        assert client.connect(f"reach-{index}", fleet.credential(f"reach-{index}"))[1][1] == 0
        clients.append(client)
    wait_for(lambda: all(route_node(fleet, f"reach-{i}") for i in range(20)), what="20 terminals online")
    status, pushed = fleet.api("POST", "/v1/push", {"broadcast": True, "payload": "all", "qos": 1})
    assert status == 202, pushed

    def reach():
        body = fleet.api("GET", f"/v1/messages/{pushed['id']}")[1]
        return body if body["delivered"] == 20 else None
    body = wait_for(reach, what="a broadcast's reach counted")
    assert body["kind"] == "broadcast" and body["nodes"] == 2 and body["ttl"] == 0, body
    for client in clients:
        client.close()
    # A topic push: where it went.
    leave_persistent_session(fleet, "topic-st", "news/st", 1)
    time.sleep(0.3)
    status, pushed = fleet.api("POST", "/v1/push", {"topic": "news/st", "payload": "x", "qos": 1})
    body = fleet.api("GET", f"/v1/messages/{pushed['id']}")[1]
    assert body["kind"] == "topic" and body["storedForSessions"] == 1 and "nodes" in body, body


def test_cli_push_prints_the_id_and_says_plainly_when_the_api_is_unreachable(fleet):
    api = f"http://127.0.0.1:{fleet.lb_http}"
    out = subprocess.run([fleet.binary, "push", "--api", api, "--to", "cli-1", "hello"], capture_output=True, text=True)
    assert out.returncode == 0, out
    message_id = out.stdout.strip()
    assert fleet.api("GET", f"/v1/messages/{message_id}")[0] == 200, out.stdout
    out = subprocess.run([fleet.binary, "push", "--api", "http://127.0.0.1:9", "--to", "cli-1", "hello"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("pushfleet: cannot reach the control API at http://127.0.0.1:9"), out
    assert "NSURLErrorDomain" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    out = subprocess.run([fleet.binary, "push", "--api", api, "--to", "bad id", "hello"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("pushfleet: HTTP 400: "), out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("-k", default="")
    args = parser.parse_args()
    for tool in ["redis-server", "redis-cli", "haproxy", "mosquitto_sub"]:
        if not shutil.which(tool):
            sys.exit(f"delivery: {tool} is not installed")
    caps = ["--queue-cap", str(CAP)]
    tests = [(name, fn, "main") for name, fn in globals().items() if name.startswith("test_") and args.k in name]
    run_suite("delivery", tests, {"main": lambda: Fleet(args.bin, control_args=caps,
                                                        node_args=[*caps, "--public-topics", "news/#"])})


if __name__ == "__main__":
    main()
