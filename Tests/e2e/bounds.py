#!/usr/bin/env python3
"""What one client or one request may make the fleet do: each bound one past its limit,
against real processes (redis-server, a control node, two push nodes, haproxy), with the
default limits. The fleet is anonymous (`--allow-anonymous`, open topic ACL), as a hostile
client on a conformance setup would find it.

Usage: python3 Tests/e2e/bounds.py --bin .build/debug/pushfleet [-k NAME]
"""
import argparse
import base64
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from fleet import SECRET, Fleet, RawMQTT, free_port, http_status, make_certificates, parse_publish, run_suite, wait_for, wait_port

MAX_SUBSCRIPTIONS = 100
MAX_LEVELS = 128


def suback_codes(packet):
    """The reason codes of a 3.1.1 SUBACK (packet id, then one byte per filter)."""
    first, body = packet
    assert first == 0x90, packet
    return list(body[2:])


def subscribe_many(client, filters, qos=0, packet_id=1):
    body = packet_id.to_bytes(2, "big") + (RawMQTT.properties() if getattr(client, "level", 4) == 5 else b"")
    for topic_filter in filters:
        body += RawMQTT.string(topic_filter) + bytes([qos])
    client.send(0x82, body)
    return client.read()


def node_alive(fleet, port):
    probe = RawMQTT(port)
    answer = probe.connect(f"probe-{time.time()}")
    probe.close()
    return answer == (0x20, b"\x00\x00")


def start_extra_node(fleet, node_id, *flags):
    """Starts one more anonymous push node on the fleet's Redis with `flags`; returns its MQTT
    port once it listens. Stop it with fleet.kill(f"node-{node_id}", signal.SIGTERM)."""
    port = free_port()
    fleet.start(f"node-{node_id}", [fleet.binary, "node", "--redis", f"redis://127.0.0.1:{fleet.redis_port}", "--secret", SECRET,
                                    "--node-id", node_id, "--mqtt", f"127.0.0.1:{port}", "--allow-anonymous", *flags])
    wait_port(port)
    return port


def read_or_none(client, seconds):
    """The next packet within `seconds`, or None if none came."""
    client.sock.settimeout(seconds)
    try:
        return client.read()
    except OSError:
        return None


def test_a_filter_or_topic_of_60000_levels_is_refused_and_the_node_stays_up(fleet):
    port = fleet.node_ports[0]
    client = RawMQTT(port)
    assert client.connect("deep-1") == (0x20, b"\x00\x00")
    # A string is at most 65,535 bytes: empty levels make 60,000 of them fit (`a/////.../#`).
    deep = "a" + "/" * 59999 + "#"
    assert suback_codes(subscribe_many(client, [deep, "a/" * (MAX_LEVELS - 1) + "#"])) == [0x80, 0x00]
    client.publish("b" + "/" * 60000, b"x", qos=1, packet_id=7)
    # 3.1.1 cannot refuse a PUBLISH: acknowledged and dropped.
    assert client.read() == (0x40, b"\x00\x07")
    client.close()
    assert node_alive(fleet, port), "the node died"
    client = RawMQTT(port)
    assert client.connect("deep-5", level=5)[1][1] == 0
    first, body = subscribe_many(client, [deep])
    assert body[-1] == 0x8F, body  # topic filter invalid
    client.close()
    assert node_alive(fleet, port)


def test_a_filter_repeated_5000_times_in_one_subscribe_is_handled_once(fleet):
    publisher = RawMQTT(fleet.node_ports[1])
    assert publisher.connect("rep-pub") == (0x20, b"\x00\x00")
    publisher.publish("rep/x", b"kept", qos=1, packet_id=1, retain=True)
    assert publisher.read()[0] == 0x40
    publisher.close()
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("rep-1") == (0x20, b"\x00\x00")
    started = time.time()
    codes = suback_codes(subscribe_many(client, ["rep/x"] * 5000, qos=0))
    assert codes == [0] * 5000, set(codes)
    retained = parse_publish(*client.read())
    assert retained["payload"] == b"kept" and retained["retain"], retained
    client.sock.settimeout(1)
    try:
        extra = client.read()
        assert extra is None, f"the retained message came more than once: {extra}"
    except TimeoutError:
        pass
    assert time.time() - started < 5
    assert fleet.redis_cli("SISMEMBER", "pushfleet:{n:n1}:index", "rep/x") == "1"
    client.close()


def test_subscriptions_per_session_stop_at_the_cap(fleet):
    for level, refusal in ((4, 0x80), (5, 0x97)):
        client = RawMQTT(fleet.node_ports[level % 2])
        assert client.connect(f"cap-{level}", level=level)[1][1] == 0
        filters = [f"cap/{i}" for i in range(MAX_SUBSCRIPTIONS + 1)]
        first, body = subscribe_many(client, filters)
        codes = list(body[2:] if level == 4 else body[3 + body[2]:])
        assert codes == [0] * MAX_SUBSCRIPTIONS + [refusal], codes[-3:]
        # At the cap, an existing subscription can still be changed, and push/<id> is not counted.
        first, body = subscribe_many(client, ["cap/0", f"push/cap-{level}"], qos=1, packet_id=2)
        assert list(body[-2:]) == [1, 1], body
        client.close()


def test_a_will_topic_with_a_wildcard_gets_a_refusing_connack(fleet):
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("will-bad", will=("dev/+/status", b"gone", 1, False)) == (0x20, b"\x00\x05")
    client.close()
    client = RawMQTT(fleet.node_ports[1])
    first, body = client.connect("will-bad5", level=5, will=("dev/#", b"gone", 1, False))
    assert first == 0x20 and body[1] == 0x90, body  # topic name invalid
    client.close()


def connect_with_delayed_will(port, name, payload, delay, expiry=120):
    client = RawMQTT(port)
    props = b"\x11" + expiry.to_bytes(4, "big")  # session expiry
    will_props = b"\x18" + delay.to_bytes(4, "big")  # will delay interval
    ack = client.connect(name, level=5, clean=True, props=props, will=(f"wills/{name}", payload, 1, False), will_props=will_props)
    assert ack[0] == 0x20 and ack[1][1] == 0, ack
    return client


def kept_flood_wills(fleet):
    """How many of the flood's 1,000 terminals have a will in Redis (one redis-cli, following
    a cluster's redirects: the keys are in 1,000 slots)."""
    return sum(int(line) for line in fleet.redis_lines([["EXISTS", f"pushfleet:{{t:flood-{i}}}:will"] for i in range(1000)]) if line)


def heap_in_use_mib(fleet, index):
    """The push node's malloc heap in use (its /metrics, from glibc mallinfo2), in MiB: what
    live objects hold, unlike RSS, which also counts memory freed but kept by the allocator."""
    with urllib.request.urlopen(f"http://127.0.0.1:{fleet.admin_ports[index]}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("pushfleet_heap_in_use_bytes"):
                return float(line.split()[-1]) / 2**20
    raise AssertionError("no pushfleet_heap_in_use_bytes in /metrics")


def test_node_memory_stays_flat_while_1000_delayed_wills_of_64_kib_wait(fleet):
    """Delayed wills waited in node memory, one scheduled task each: 1,000 wills of 64 KiB
    with a 60 s delay kept ~85 MiB more alive a round. They wait in Redis now. Measured as
    heap in use: RSS moves by tens of MiB from round to round with the allocator's free
    memory (receive buffers of 1,000 large CONNECTs, writes queued towards Redis)."""
    port = fleet.node_ports[1]
    payload = b"w" * 65535  # the largest will payload (a two-byte length)
    heap, rss = [], []
    for round_number in range(3):
        clients = [connect_with_delayed_will(port, f"flood-{index}", payload, delay=60) for index in range(1000)]
        for client in clients:
            client.close()  # no DISCONNECT: the wills are due in 60 s
        # This round's wills (a reconnect dropped the last round's) all kept in Redis.
        wait_for(lambda: kept_flood_wills(fleet) == 1000, timeout=30, what="1,000 wills in Redis")
        assert int(fleet.redis_cli("ZCARD", "pushfleet:wills")) == 1000
        time.sleep(1.0)
        heap.append(heap_in_use_mib(fleet, 1))
        rss.append(fleet.rss_kib("node2") / 1024)
    assert int(fleet.redis_cli("STRLEN", "pushfleet:{t:flood-7}:will")) > 65535
    figures = f"heap in use by round (MiB): {[round(h) for h in heap]}, RSS: {[round(r) for r in rss]}"
    print(figures)
    assert heap[0] > 1, figures  # the metric is there (glibc)
    assert heap[2] - heap[0] < 20, figures
    # Not published by anyone later in the suite.
    fleet.redis_cli("DEL", "pushfleet:wills")


def test_a_delayed_will_survives_the_death_of_its_node_and_is_published_once(fleet):
    watcher = RawMQTT(fleet.node_ports[0])
    assert watcher.connect("will-watcher") == (0x20, b"\x00\x00")
    assert suback_codes(subscribe_many(watcher, ["wills/#"], qos=1)) == [1]
    time.sleep(0.3)
    connect_with_delayed_will(fleet.node_ports[1], "orphan", b"my node died", delay=2).close()
    wait_for(lambda: fleet.redis_cli("ZSCORE", "pushfleet:wills", "orphan"), what="the will kept in Redis")
    fleet.kill("node2")
    try:
        watcher.sock.settimeout(10)
        first, body = watcher.read()
        message = parse_publish(first, body)
        assert (message["topic"], message["payload"]) == ("wills/orphan", b"my node died"), message
        watcher.puback(message["id"])
        # Published once: no second copy, nothing left in Redis.
        extra = read_or_none(watcher, 3)
        assert extra is None, extra
        assert not fleet.redis_cli("ZSCORE", "pushfleet:wills", "orphan")
        assert fleet.redis_cli("EXISTS", "pushfleet:{t:orphan}:will") == "0"
    finally:
        watcher.close()
        fleet.restart("node2")
        wait_port(fleet.node_ports[1])
        wait_for(lambda: http_status(f"http://127.0.0.1:{fleet.admin_ports[1]}/readyz") == 200, what="node2 ready again")


def test_an_unreadable_delayed_will_written_into_redis_is_dropped_once(fleet):
    """Anyone with Redis can write there: a will that does not decode is settled (dropped with
    a warning), not claimed again at every 30 s lease, and no node stops."""
    fleet.redis_cli("SET", "pushfleet:{t:garbled}:will", "{not json")
    fleet.redis_cli("ZADD", "pushfleet:wills", "0", "garbled")
    wait_for(lambda: not fleet.redis_cli("ZSCORE", "pushfleet:wills", "garbled"), timeout=10, what="the claim settled")
    assert fleet.redis_cli("EXISTS", "pushfleet:{t:garbled}:will") == "0"
    assert node_alive(fleet, fleet.node_ports[0]) and node_alive(fleet, fleet.node_ports[1])


def test_a_delayed_will_one_past_the_fleets_bound_is_published_at_once(fleet):
    fleet.redis_cli("DEL", "pushfleet:wills")
    port = start_extra_node(fleet, "wills", "--max-delayed-wills", "2")
    watcher = RawMQTT(fleet.node_ports[0])
    try:
        assert watcher.connect("bound-watcher") == (0x20, b"\x00\x00")
        assert suback_codes(subscribe_many(watcher, ["wills/#"], qos=0)) == [0]
        time.sleep(0.3)
        for index in range(2):
            connect_with_delayed_will(port, f"bound-{index}", b"later", delay=60).close()
        wait_for(lambda: int(fleet.redis_cli("ZCARD", "pushfleet:wills")) == 2, what="two wills kept")
        early = read_or_none(watcher, 0.5)
        assert early is None, early
        connect_with_delayed_will(port, "bound-2", b"now", delay=60).close()
        watcher.sock.settimeout(5)
        message = parse_publish(*watcher.read())
        assert (message["topic"], message["payload"]) == ("wills/bound-2", b"now"), message
        assert int(fleet.redis_cli("ZCARD", "pushfleet:wills")) == 2
    finally:
        watcher.close()
        fleet.kill("node-wills", signal.SIGTERM)
        fleet.redis_cli("DEL", "pushfleet:wills")


MAX_RETAINED_SIZE = 65536
MAX_USER_PROPERTY_BYTES = 8192


def puback_code(client, packet_id):
    """Reads the PUBACK for `packet_id`: its reason code (0 for a 3.1.1 one)."""
    first, body = client.read()
    assert first == 0x40 and int.from_bytes(body[:2], "big") == packet_id, (first, body)
    return body[2] if len(body) > 2 else 0


def clear_retained(fleet):
    fleet.redis_cli("DEL", "pushfleet:{retained}", "pushfleet:{retained}:bytes")


def test_a_retained_payload_one_past_its_size_is_refused(fleet):
    clear_retained(fleet)
    port = fleet.node_ports[0]
    v5 = RawMQTT(port)
    assert v5.connect("ret-size-5", level=5)[1][1] == 0
    v5.publish("ret/big", b"r" * (MAX_RETAINED_SIZE + 1), qos=1, packet_id=1, retain=True)
    assert puback_code(v5, 1) == 0x97
    v5.publish("ret/big", b"r" * MAX_RETAINED_SIZE, qos=1, packet_id=2, retain=True)
    assert puback_code(v5, 2) == 0
    assert fleet.redis_cli("HEXISTS", "pushfleet:{retained}", "ret/big") == "1"
    # Not retained, a payload that size is an ordinary publish.
    v5.publish("ret/big-plain", b"r" * (MAX_RETAINED_SIZE + 1), qos=1, packet_id=3)
    assert puback_code(v5, 3) == 0
    v5.close()
    # MQTT 3.1.1 cannot refuse: acknowledged, not retained.
    v3 = RawMQTT(port)
    assert v3.connect("ret-size-3") == (0x20, b"\x00\x00")
    v3.publish("ret/big3", b"r" * (MAX_RETAINED_SIZE + 1), qos=1, packet_id=4, retain=True)
    assert puback_code(v3, 4) == 0
    assert fleet.redis_cli("HEXISTS", "pushfleet:{retained}", "ret/big3") == "0"
    v3.close()
    clear_retained(fleet)


def test_the_fleets_retained_messages_stop_at_their_count_and_bytes_and_a_retained_will_at_its_size(fleet):
    clear_retained(fleet)
    port = start_extra_node(fleet, "retained", "--max-retained", "3", "--max-retained-bytes", "7000", "--max-retained-size", "3000")
    watcher = RawMQTT(fleet.node_ports[0])
    try:
        assert watcher.connect("ret-watcher") == (0x20, b"\x00\x00")
        assert suback_codes(subscribe_many(watcher, ["count/#"], qos=0)) == [0]
        time.sleep(0.3)
        client = RawMQTT(port)
        assert client.connect("ret-count", level=5)[1][1] == 0
        for index in range(3):
            client.publish(f"count/{index}", b"x", qos=1, packet_id=index + 1, retain=True)
            assert puback_code(client, index + 1) == 0
        # One past the count: refused, and delivered to nobody.
        client.publish("count/3", b"x", qos=1, packet_id=9, retain=True)
        assert puback_code(client, 9) == 0x97
        # Replacing one, or deleting one, is not a new one.
        client.publish("count/0", b"y", qos=1, packet_id=10, retain=True)
        assert puback_code(client, 10) == 0
        client.publish("count/1", b"", qos=1, packet_id=11, retain=True)
        assert puback_code(client, 11) == 0
        client.publish("count/3", b"x", qos=1, packet_id=12, retain=True)
        assert puback_code(client, 12) == 0
        watcher.sock.settimeout(3)
        seen = [parse_publish(*watcher.read())["topic"] for _ in range(6)]
        assert seen == ["count/0", "count/1", "count/2", "count/0", "count/1", "count/3"], seen
        # Bytes: one stored entry of a 3,000-byte payload is ~4.1 KB; two pass 7,000.
        clear_retained(fleet)
        client.publish("bytes/a", b"b" * 3000, qos=1, packet_id=13, retain=True)
        assert puback_code(client, 13) == 0
        client.publish("bytes/b", b"b" * 3000, qos=1, packet_id=14, retain=True)
        assert puback_code(client, 14) == 0x97
        assert fleet.redis_cli("HLEN", "pushfleet:{retained}") == "1"
        stored = int(fleet.redis_cli("HSTRLEN", "pushfleet:{retained}", "bytes/a"))
        assert int(fleet.redis_cli("GET", "pushfleet:{retained}:bytes")) == stored
        client.close()
        # A will to be retained, one past the size (a will's payload is at most 65,535 bytes,
        # below the default): refused at CONNECT; at the size: accepted.
        for size, code in ((3001, 0x97), (3000, 0)):
            will = RawMQTT(port)
            ack = will.connect(f"ret-will-{size}", level=5, will=("ret/will", b"w" * size, 1, True))
            assert ack[0] == 0x20 and ack[1][1] == code, (size, ack)
            will.send(0xE0, b"\x00")
            will.close()
    finally:
        watcher.close()
        fleet.kill("node-retained", signal.SIGTERM)
        clear_retained(fleet)


def user_properties(total):
    """One user property whose name and value make `total` bytes."""
    return b"\x26" + RawMQTT.string("k") + RawMQTT.string("v" * (total - 1))


def test_user_properties_one_past_their_bound_are_refused_in_connect_will_and_publish(fleet):
    port = fleet.node_ports[1]
    client = RawMQTT(port)
    ack = client.connect("up-connect", level=5, props=user_properties(MAX_USER_PROPERTY_BYTES + 1))
    assert ack[0] == 0x20 and ack[1][1] == 0x95, ack
    client.close()
    client = RawMQTT(port)
    ack = client.connect("up-will", level=5, will=("up/will", b"w", 0, False), will_props=user_properties(MAX_USER_PROPERTY_BYTES + 1))
    assert ack[0] == 0x20 and ack[1][1] == 0x95, ack
    client.close()
    client = RawMQTT(port)
    assert client.connect("up-publish", level=5, props=user_properties(MAX_USER_PROPERTY_BYTES))[1][1] == 0
    client.publish("up/a", b"p", qos=1, packet_id=1, props=user_properties(MAX_USER_PROPERTY_BYTES + 1))
    assert puback_code(client, 1) == 0x83
    client.publish("up/a", b"p", qos=1, packet_id=2, props=user_properties(MAX_USER_PROPERTY_BYTES))
    assert puback_code(client, 2) == 0
    client.close()


def test_outbound_topic_aliases_stay_within_the_nodes_maximum(fleet):
    receiver = RawMQTT(fleet.node_ports[0])
    # Topic alias maximum 1000 (property 0x22) from the client; the node's default is 32.
    first, body = receiver.connect("alias-r", level=5, props=b"\x22\x03\xe8")
    assert first == 0x20 and body[1] == 0
    subscribe_many(receiver, ["alias/#"])
    sender = RawMQTT(fleet.node_ports[0])
    assert sender.connect("alias-s") == (0x20, b"\x00\x00")
    for index in range(40):
        sender.publish(f"alias/{index}", b"x")
    aliases = []
    for _ in range(40):
        publish = parse_publish(*receiver.read(), level=5)
        props = publish["props"]
        position = props.find(b"\x23")
        aliases.append(int.from_bytes(props[position + 1:position + 3], "big") if position >= 0 else None)
    assert max(a for a in aliases if a) == 32 and aliases[32:] == [None] * 8, aliases
    sender.close()
    receiver.close()


def test_a_request_storing_too_much_or_addressing_too_many_gets_413(fleet):
    payload = base64.b64encode(b"x" * 128 * 1024).decode()
    status, body = fleet.api("POST", "/v1/push", {"to": [f"big-{i}" for i in range(600)], "payloadBase64": payload})
    assert status == 413 and body["error"]["code"] == "payload_too_large", (status, body)
    many = [{"to": [f"t{j}-{i}" for i in range(10000)], "payload": "x", "ttl": 0} for j in range(11)]
    status, body = fleet.api("POST", "/v1/push/batch", {"messages": many})
    assert status == 413 and "110000 terminals" in body["error"]["message"], (status, body)
    # Within the bounds: accepted.
    status, body = fleet.api("POST", "/v1/push/batch", {"messages": many[:10]})
    assert status == 202, (status, body)


def test_connections_with_large_connect_properties_opened_and_closed_in_rounds_leave_node_memory_level(fleet):
    """A handler and its CONNECT outlived the connection (two reference cycles): 1,000 MQTT 5
    connections with a 64 KiB user property each grew the node by ~70 MiB a round."""
    port = fleet.node_ports[1]
    prop = b"\x26" + RawMQTT.string("k") + RawMQTT.string("v" * 65000)
    rss = []
    for round_number in range(4):
        clients = []
        for index in range(500):
            client = RawMQTT(port)
            assert client.connect(f"mem-{round_number}-{index}", level=5, props=prop)[0] == 0x20
            clients.append(client)
        for client in clients:
            client.close()
        time.sleep(1.5)
        rss.append(fleet.rss_kib("node2") / 1024)
    assert rss[3] - rss[1] < 20, f"node RSS by round (MiB): {[round(r) for r in rss]}"


def test_qos2_publishes_never_released_end_a_311_connection_at_the_receive_maximum(fleet):
    """MQTT 3.1.1 has no receive maximum to announce: the 65th QoS 2 publish without a PUBREL
    for the earlier ones ends the connection (it used to grow the session without bound)."""
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("norel-1") == (0x20, b"\x00\x00")
    for packet_id in range(1, 66):
        client.publish("norel/x", b"x", qos=2, packet_id=packet_id)
    pubrecs = 0
    client.sock.settimeout(10)
    deadline = time.time() + 20
    while time.time() < deadline:
        packet = client.read()
        if packet is None:
            break
        assert packet[0] == 0x50, packet
        pubrecs += 1
    # Closed (the loop ended), at most 64 of them acknowledged with PUBREC first.
    assert pubrecs <= 64, f"{pubrecs} PUBRECs before the close"
    client.close()


def test_a_flooding_publisher_gets_every_acknowledgement_in_order_and_others_are_still_served(fleet):
    """20,000 retained QoS 1 publishes (each a Redis write) written without waiting: the node
    reads them as Redis takes them, acknowledges all in order, and a push to another terminal
    still arrives at once."""
    import threading
    flooder = RawMQTT(fleet.node_ports[1])
    assert flooder.connect("flood-1") == (0x20, b"\x00\x00")
    count = 20000

    def flood():
        for index in range(count):
            flooder.publish(f"flood/{index % 500}", b"y" * 200, qos=1, packet_id=index % 65535 + 1, retain=True)
    writer = threading.Thread(target=flood)
    writer.start()
    other = RawMQTT(fleet.node_ports[1])
    assert other.connect("flood-other", fleet.credential("flood-other")) == (0x20, b"\x00\x00")
    started = time.time()
    fleet.api("POST", "/v1/push", {"to": ["flood-other"], "payload": "meanwhile"})
    got = parse_publish(*other.read())
    assert got["payload"] == b"meanwhile" and time.time() - started < 5, time.time() - started
    other.close()
    expected_id = 1
    flooder.sock.settimeout(60)
    for index in range(count):
        packet = flooder.read()
        assert packet is not None and packet[0] == 0x40, (index, packet)
        assert int.from_bytes(packet[1][:2], "big") == expected_id, (index, packet)
        expected_id = expected_id % 65535 + 1
    writer.join()
    flooder.close()


# ------------------------------------------------------------------ deadlines, connections

def closed_within(port, seconds, send=b""):
    """Opens a TCP connection, sends `send` (maybe nothing), and returns how long the server
    took to close it (None if it did not within `seconds` + 3)."""
    started = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 3) as sock:
        if send:
            sock.sendall(send)
        try:
            while sock.recv(4096):
                pass
        except (TimeoutError, socket.timeout):
            return None
        except ConnectionResetError:
            pass
    return time.time() - started


def test_half_open_handshakes_are_closed_within_their_deadlines_and_connections_are_capped(fleet):
    certificates = tempfile.mkdtemp(prefix="pushfleet-bounds-")
    _, certificate, key = make_certificates(certificates)
    redis = f"redis://127.0.0.1:{fleet.redis_port}"
    mqtt, ws, tls, admin, api = (free_port() for _ in range(5))
    fleet.start("node-guarded", [fleet.binary, "node", "--redis", redis, "--secret", SECRET, "--node-id", "guarded",
                                 "--mqtt", f"127.0.0.1:{mqtt}", "--ws", f"127.0.0.1:{ws}", "--tls", f"127.0.0.1:{tls}",
                                 "--tls-cert", certificate, "--tls-key", key, "--admin", f"127.0.0.1:{admin}",
                                 "--allow-anonymous", "--max-connections", "3", "--connect-timeout", "2",
                                 "--http-idle-timeout", "2"])
    fleet.start("control-guarded", [fleet.binary, "control", "--redis", redis, "--secret", SECRET, "--listen",
                                    f"127.0.0.1:{api}", "--consumer", "cguard", "--http-idle-timeout", "2"])
    try:
        for port in (mqtt, ws, tls, admin, api):
            wait_port(port)
        wait_for(lambda: http_status(f"http://127.0.0.1:{admin}/healthz") == 200, what="guarded node up")
        # Silent TCP, a WebSocket upgrade that never finishes, a TLS handshake never started,
        # an HTTP request head never finished on the admin port and on the API.
        for what, port, send in (("mqtt", mqtt, b""), ("ws", ws, b"GET /mqtt HTTP/1.1\r\nHost: x\r\n"), ("tls", tls, b""),
                                 ("admin", admin, b"GET /healthz HTTP/1.1\r\nHo"), ("api", api, b"POST /v1/push HTTP/1.1\r\n")):
            waited = closed_within(port, 2, send)
            assert waited is not None and waited < 4.5, f"{what}: still open after {waited}"
        # Three connections at most; the fourth is refused with a CONNACK, then one leaves.
        held = []
        for index in range(3):
            client = RawMQTT(mqtt)
            assert client.connect(f"slot-{index}") == (0x20, b"\x00\x00")
            held.append(client)
        extra = RawMQTT(mqtt)
        assert extra.connect("slot-x") == (0x20, b"\x00\x03")
        extra.close()
        extra = RawMQTT(mqtt)
        first, body = extra.connect("slot-x5", level=5)
        assert first == 0x20 and body[1] == 0x89, body
        extra.close()
        held.pop().close()

        def connects():
            client = RawMQTT(mqtt)
            answer = client.connect("slot-y")
            client.close()
            return answer == (0x20, b"\x00\x00")
        wait_for(connects, what="a slot freed by a closed connection")
        for client in held:
            client.close()
    finally:
        fleet.kill("node-guarded", signal.SIGTERM)
        fleet.kill("control-guarded", signal.SIGTERM)
        shutil.rmtree(certificates, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("-k", default="")
    args = parser.parse_args()
    for tool in ["redis-server", "redis-cli", "haproxy"]:
        if not shutil.which(tool):
            sys.exit(f"bounds: {tool} is not installed")
    tests = [(name, fn, "main") for name, fn in globals().items() if name.startswith("test_") and args.k in name]
    run_suite("bounds", tests, {"main": lambda: Fleet(args.bin, node_args=["--allow-anonymous"])})


if __name__ == "__main__":
    main()
