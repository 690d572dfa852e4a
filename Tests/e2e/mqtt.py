#!/usr/bin/env python3
"""MQTT broker behaviour of the whole fleet, one test per feature, with real clients.

Two fleets of real processes (redis-server, a control node, two push nodes, haproxy round
robin in front of them): an anonymous one (`--allow-anonymous`, as conformance suites run it)
and one with credentials and a configured topic ACL. Clients are spread over both push nodes
on purpose (each test names the node port it connects to) and some go through haproxy.
paho-mqtt 2.x in 3.1.1 and 5.0 modes, mosquitto_pub/sub, and a byte-level client where a
real one hides what is checked (DUP flags, withheld acknowledgements, property bytes).

Usage: python3 Tests/e2e/mqtt.py --bin .build/debug/pushfleet [-k NAME]
"""
import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet import Fleet, RawMQTT, free_port, http_status, make_certificates, parse_publish, run_suite, wait_for


class Client:
    """A paho client that records what arrives: messages in a queue, CONNACK flags, SUBACK
    and PUBACK reason codes, the DISCONNECT reason."""

    def __init__(self, port, client_id, v5=False, clean=True, session_expiry=None, will=None, username=None,
                 password=None, connect_props=None, keepalive=60, transport="tcp", ca=None):
        self.messages = queue.Queue()
        self.subacks = {}
        self.pubacks = {}
        self.ack_properties = {}  # mid -> properties of its SUBACK / PUBACK
        self.disconnect_reason = None
        self.connack = None
        self.v5 = v5
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  clean_session=None if v5 else clean, reconnect_on_failure=False,
                                  transport="websockets" if transport in ("ws", "wss") else "tcp")
        if transport in ("ws", "wss"):
            self.client.ws_set_options(path="/mqtt")
        if transport in ("tls", "wss"):
            self.client.tls_set(ca_certs=ca)
        if username:
            self.client.username_pw_set(username, password)
        if will:
            topic, payload, props = will
            self.client.will_set(topic, payload, qos=1, properties=props)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.connected = threading.Event()
        kwargs = {}
        if v5:
            props = connect_props or Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
            kwargs = {"clean_start": clean, "properties": props}
        self.client.connect("127.0.0.1", port, keepalive, **kwargs)
        self.client.loop_start()
        assert self.connected.wait(10), f"{client_id}: no CONNACK"

    def _on_connect(self, client, userdata, flags, code, props):
        self.connack = (flags.session_present, int(code.value), props)
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, codes, props):
        self.ack_properties[mid] = props
        self.subacks[mid] = [int(x.value) for x in codes]

    def _on_publish(self, client, userdata, mid, code, props):
        self.ack_properties[mid] = props
        self.pubacks[mid] = int(code.value)

    def _on_disconnect(self, client, userdata, flags, code, props):
        self.disconnect_reason = int(code.value)

    def subscribe(self, *subscriptions, props=None):
        """Each subscription: (filter, qos) or (filter, SubscribeOptions). Returns the SUBACK codes."""
        result, mid = self.client.subscribe(list(subscriptions), properties=props)
        assert result == mqtt.MQTT_ERR_SUCCESS
        self.last_mid = mid
        return wait_for(lambda: self.subacks.get(mid), what="SUBACK")

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        """Publishes and, for QoS 1/2, waits for the acknowledgement; returns its reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        self.last_mid = info.mid
        if qos:
            info.wait_for_publish(10)
            return wait_for(lambda: info.mid in self.pubacks and (self.pubacks[info.mid],), what="PUBACK")[0]
        return 0

    def expect(self, count, timeout=5.0):
        """The next `count` messages (fails if they do not come)."""
        got = []
        deadline = time.time() + timeout
        while len(got) < count:
            try:
                got.append(self.messages.get(timeout=max(0.01, deadline - time.time())))
            except queue.Empty:
                raise AssertionError(f"expected {count} messages, got {[(m.topic, m.payload) for m in got]}")
        return got

    def expect_none(self, wait=0.7):
        time.sleep(wait)
        assert self.messages.empty(), f"unexpected message {self.messages.get().payload!r}"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def props(packet_type, **values):
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def assert_silent(raw, what, wait=1.0):
    """Nothing more arrives on a byte-level connection within `wait` seconds."""
    raw.sock.settimeout(wait)
    try:
        packet = raw.read()
        assert packet is None, f"{what}: {packet}"
    except TimeoutError:
        pass
    raw.sock.settimeout(10)


def settle():
    """Time for a subscription made on one node to reach the other node's copy of the index."""
    time.sleep(0.2)


# ------------------------------------------------------------- routing across the fleet

def test_publish_reaches_subscribers_on_both_nodes(fleet):
    n1, n2 = fleet.node_ports
    a = Client(n1, "route-a")
    b = Client(n2, "route-b")
    assert a.subscribe(("room/1", 1)) == [1]
    assert b.subscribe(("room/1", 1)) == [1]
    settle()
    pub = Client(n1, "route-pub")
    pub.publish("room/1", b"hi", qos=1)
    for client in (a, b):
        message = client.expect(1)[0]
        assert (message.topic, message.payload, message.qos) == ("room/1", b"hi", 1)
    # A topic nobody subscribes to reaches nobody, and the publisher is still acknowledged.
    assert pub.publish("room/2", b"nobody", qos=1) == 0
    a.expect_none()
    for client in (a, b, pub):
        client.close()


def test_wildcards_and_dollar_topics(fleet):
    n1, n2 = fleet.node_ports
    everything = Client(n2, "wild-all")
    single = Client(n1, "wild-single")
    dollar = Client(n2, "wild-dollar")
    assert everything.subscribe(("#", 0)) == [0]
    assert single.subscribe(("a/+/c", 0), ("+/x", 0)) == [0, 0]
    assert dollar.subscribe(("$app/#", 0)) == [0]
    settle()
    pub = Client(n1, "wild-pub")
    pub.publish("a/b/c", b"1", qos=1)
    pub.publish("a/b/d", b"2", qos=1)
    pub.publish("$app/x", b"3", qos=1)  # not matched by '#' nor '+/x' (MQTT 4.7.2)
    pub.publish("q/x", b"4", qos=1)
    assert [m.payload for m in everything.expect(3)] == [b"1", b"2", b"4"]
    assert sorted(m.payload for m in single.expect(2)) == [b"1", b"4"]
    assert [m.payload for m in dollar.expect(1)] == [b"3"]
    everything.expect_none(0.3)
    single.expect_none(0.1)
    for client in (everything, single, dollar, pub):
        client.close()


def test_overlapping_subscriptions_deliver_once_at_the_highest_qos_with_every_identifier(fleet):
    n1, n2 = fleet.node_ports
    sub = Client(n2, "overlap-sub", v5=True)
    assert sub.subscribe(("o/#", 0), props=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=3)) == [0]
    assert sub.subscribe(("o/+", 2), props=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9)) == [2]
    settle()
    pub = Client(n1, "overlap-pub", v5=True)
    pub.publish("o/1", b"x", qos=2)
    message = sub.expect(1)[0]
    assert message.qos == 2
    assert sorted(message.properties.SubscriptionIdentifier) == [3, 9]
    sub.expect_none()
    sub.close()
    pub.close()


def test_shared_subscription_is_balanced_across_nodes_and_delivers_each_message_once(fleet):
    n1, n2 = fleet.node_ports
    members = [Client(n1, "share-1", v5=True), Client(n2, "share-2", v5=True), Client(n2, "share-3", v5=True)]
    for member in members:
        assert member.subscribe(("$share/workers/jobs/+", 1)) == [1]
    plain = Client(n1, "share-plain", v5=True)
    assert plain.subscribe(("jobs/+", 1)) == [1]
    settle()
    pub = Client(n1, "share-pub", v5=True)
    for index in range(30):
        pub.publish("jobs/a", str(index).encode(), qos=1)
    assert len(plain.expect(30)) == 30  # an ordinary subscription gets every message
    time.sleep(0.5)
    received = {member: [] for member in ("share-1", "share-2", "share-3")}
    for name, member in zip(received, members):
        while not member.messages.empty():
            received[name].append(int(member.messages.get().payload))
    everything = sorted(sum(received.values(), []))
    assert everything == list(range(30)), received
    assert received["share-1"] and (received["share-2"] or received["share-3"]), received
    for client in (*members, plain, pub):
        client.close()


def test_topic_push_from_the_api_reaches_subscribers_and_waits_for_absent_persistent_sessions(fleet):
    n1, n2 = fleet.node_ports
    away = Client(n2, "alert-away", v5=True, clean=True, session_expiry=600)
    away.subscribe(("alerts/#", 1))
    away.close()
    online = Client(n1, "alert-online", v5=True)
    online.subscribe(("alerts/+", 1))
    settle()
    status, body = fleet.api("POST", "/v1/push", {"topic": "alerts/fire", "payload": "run", "qos": 1, "ttl": 60})
    assert status == 202, body
    message = online.expect(1)[0]
    assert message.payload == b"run" and ("message-id", body["id"]) in message.properties.UserProperty
    status, _ = fleet.api("POST", "/v1/push", {"topic": "alerts/drill", "payload": "live only", "qos": 1, "ttl": 0})
    assert status == 202
    assert online.expect(1)[0].payload == b"live only"
    back = Client(n1, "alert-away", v5=True, clean=False, session_expiry=600)
    got = back.expect(1)[0]
    assert (got.topic, got.payload) == ("alerts/fire", b"run")  # the ttl 0 push was not kept
    back.expect_none()
    back.close()
    online.close()


# ------------------------------------------------------------- retained messages

def test_retained_message_reaches_a_new_subscriber_on_the_other_node_and_empty_payload_clears_it(fleet):
    n1, n2 = fleet.node_ports
    pub = Client(n1, "retain-pub")
    pub.publish("status/lamp", b"on", qos=1, retain=True)
    pub.publish("status/door", b"open", qos=0, retain=True)
    time.sleep(0.2)
    sub = Client(n2, "retain-sub")
    sub.subscribe(("status/+", 1))
    got = {m.topic: (m.payload, m.retain) for m in sub.expect(2)}
    assert got == {"status/lamp": (b"on", True), "status/door": (b"open", True)}, got
    # A live message on an established subscription carries RETAIN 0 (MQTT 3.1.1 3.3.1.3).
    pub.publish("status/lamp", b"off", qos=1, retain=True)
    live = sub.expect(1)[0]
    assert (live.payload, live.retain) == (b"off", False)
    # An empty retained payload clears it.
    pub.publish("status/lamp", b"", qos=1, retain=True)
    sub.expect(1)
    later = Client(n1, "retain-later")
    later.subscribe(("status/lamp", 1))
    later.expect_none()
    for client in (pub, sub, later):
        client.close()


def test_retain_as_published_and_retain_handling(fleet):
    n1, n2 = fleet.node_ports
    pub = Client(n1, "rap-pub", v5=True)
    pub.publish("rap/t", b"kept", qos=1, retain=True)
    time.sleep(0.2)
    sub = Client(n2, "rap-sub", v5=True)
    assert sub.subscribe(("rap/t", mqtt.SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2))) == [1]
    sub.expect_none(0.5)  # retain handling 2: no retained message on subscribe
    settle()
    pub.publish("rap/t", b"again", qos=1, retain=True)
    message = sub.expect(1)[0]
    assert (message.payload, message.retain) == (b"again", True)  # retain as published
    # Retain handling 1 sends the retained message only for a new subscription.
    assert sub.subscribe(("rap/#", mqtt.SubscribeOptions(qos=1, retainHandling=1))) == [1]
    assert sub.expect(1)[0].payload == b"again"
    assert sub.subscribe(("rap/#", mqtt.SubscribeOptions(qos=1, retainHandling=1))) == [1]
    sub.expect_none(0.5)
    pub.publish("rap/t", b"", qos=1, retain=True)
    sub.close()
    pub.close()


# ------------------------------------------------------------- wills

def test_will_is_published_when_the_connection_drops_not_on_disconnect(fleet):
    n1, n2 = fleet.node_ports
    watcher = Client(n1, "will-watch")
    watcher.subscribe(("wills/#", 1))
    settle()
    dropped = RawMQTT(n2)
    assert dropped.connect("will-drop", will=("wills/drop", b"gone", 1, False)) == (0x20, b"\x00\x00")
    dropped.close()  # no DISCONNECT
    message = watcher.expect(1)[0]
    assert (message.topic, message.payload) == ("wills/drop", b"gone")
    polite = RawMQTT(n2)
    assert polite.connect("will-polite", will=("wills/polite", b"gone", 1, False)) == (0x20, b"\x00\x00")
    polite.send(0xE0, b"")
    polite.close()
    watcher.expect_none(1.0)
    watcher.close()


def test_will_is_published_on_keepalive_expiry(fleet):
    n1, n2 = fleet.node_ports
    watcher = Client(n2, "ka-watch")
    watcher.subscribe(("wills/ka", 1))
    settle()
    silent = RawMQTT(n1)
    assert silent.connect("ka-silent", keepalive=1, will=("wills/ka", b"timeout", 1, False)) == (0x20, b"\x00\x00")
    started = time.time()
    assert watcher.expect(1, timeout=6)[0].payload == b"timeout"
    assert time.time() - started >= 1.4  # 1.5 x keepalive, not at once
    silent.close()
    watcher.close()


def test_will_delay_is_cancelled_by_a_reconnect_on_the_other_node(fleet):
    n1, n2 = fleet.node_ports
    watcher = Client(n1, "delay-watch")
    watcher.subscribe(("wills/delay/#", 1))
    settle()
    delay_props = b"\x18" + (2).to_bytes(4, "big")  # will delay interval 2 s
    expiry = b"\x11" + (60).to_bytes(4, "big")  # session expiry 60 s
    for name, come_back in (("delay-back", True), ("delay-gone", False)):
        raw = RawMQTT(n1)
        ack = raw.connect(name, level=5, clean=True, props=expiry, will=(f"wills/delay/{name}", b"bye", 1, False),
                          will_props=delay_props)
        assert ack[0] == 0x20 and ack[1][1] == 0, ack
        raw.close()
        if come_back:
            time.sleep(0.5)
            again = RawMQTT(n2)
            assert again.connect(name, level=5, clean=False, props=expiry)[1][1] == 0
            time.sleep(2.5)
            watcher.expect_none(0.1)
            again.send(0xE0, b"\x00")
            again.close()
        else:
            message = watcher.expect(1, timeout=5)[0]
            assert message.topic == "wills/delay/delay-gone"
    watcher.close()


# ------------------------------------------------------------- sessions

def test_persistent_session_moves_to_the_other_node_with_its_subscriptions_and_messages(fleet):
    n1, n2 = fleet.node_ports
    first = Client(n1, "persist-1", clean=False)
    assert first.connack[0] is False
    first.subscribe(("news/#", 1))
    first.close()
    time.sleep(0.2)
    pub = Client(n2, "persist-pub")
    # The QoS 0 message first: the PUBACKs of the QoS 1 messages after it (one client's
    # publishes are routed in order) say it was routed while persist-1 was away. Sent last,
    # it could be routed after persist-1 came back, and then be delivered, rightly.
    pub.publish("news/x", b"qos0-not-kept", qos=0)
    for index in range(3):
        pub.publish("news/x", f"m{index}".encode(), qos=1)
    again = Client(n2, "persist-1", clean=False)
    assert again.connack[0] is True  # session present
    assert [m.payload for m in again.expect(3)] == [b"m0", b"m1", b"m2"]
    again.expect_none(0.3)
    # Live messages still reach it through the subscription it did not repeat.
    pub.publish("news/y", b"live", qos=1)
    assert again.expect(1)[0].payload == b"live"
    again.close()
    # A clean session discards the old one: no session present, no subscription.
    clean = Client(n1, "persist-1", clean=True)
    assert clean.connack[0] is False
    settle()
    pub.publish("news/z", b"after-clean", qos=1)
    clean.expect_none()
    clean.close()
    pub.close()


def test_unacknowledged_messages_are_redelivered_with_dup_on_the_other_node(fleet):
    n1, n2 = fleet.node_ports
    raw = RawMQTT(n1)
    assert raw.connect("inflight-1", clean=False) == (0x20, b"\x00\x00")
    assert raw.subscribe("inflight/+", 1)[0] == 0x90
    settle()
    pub = Client(n2, "inflight-pub")
    pub.publish("inflight/a", b"one", qos=1)
    first = parse_publish(*raw.read())
    assert (first["payload"], first["dup"]) == (b"one", False)
    raw.close()  # without PUBACK
    time.sleep(0.2)
    again = RawMQTT(n2)
    assert again.connect("inflight-1", clean=False) == (0x20, b"\x01\x00")
    second = parse_publish(*again.read())
    assert (second["payload"], second["dup"], second["id"]) == (b"one", True, first["id"]), (first, second)
    again.puback(second["id"])
    again.send(0xE0, b"")
    again.close()
    time.sleep(0.2)
    last = RawMQTT(n1)
    assert last.connect("inflight-1", clean=False) == (0x20, b"\x01\x00")
    assert_silent(last, "acknowledged message came again")
    last.close()
    pub.close()


def test_pubrel_is_sent_again_after_a_reconnect_on_the_other_node(fleet):
    n1, n2 = fleet.node_ports
    raw = RawMQTT(n1)
    assert raw.connect("pubrel-1", clean=False) == (0x20, b"\x00\x00")
    assert raw.subscribe("pubrel/t", 2)[0] == 0x90
    settle()
    pub = Client(n2, "pubrel-pub")
    pub.publish("pubrel/t", b"exactly once", qos=2)
    publish = parse_publish(*raw.read())
    assert (publish["payload"], publish["qos"]) == (b"exactly once", 2)
    packet_id = publish["id"].to_bytes(2, "big")
    raw.send(0x50, packet_id)  # PUBREC
    assert raw.read() == (0x62, packet_id)  # PUBREL
    raw.close()  # before PUBCOMP
    time.sleep(0.2)
    again = RawMQTT(n2)
    assert again.connect("pubrel-1", clean=False) == (0x20, b"\x01\x00")
    assert again.read() == (0x62, packet_id)  # PUBREL again, same packet id, no second PUBLISH
    again.send(0x70, packet_id)  # PUBCOMP
    assert_silent(again, "more than PUBREL came")
    again.close()
    pub.close()


def test_session_expiry_ends_the_session(fleet):
    n1, n2 = fleet.node_ports
    short = Client(n1, "expiry-1", v5=True, clean=True, session_expiry=1)
    short.subscribe(("exp/#", 1))
    short.close()
    time.sleep(2.2)
    again = Client(n2, "expiry-1", v5=True, clean=False, session_expiry=60)
    assert again.connack[0] is False
    again.close()
    back = Client(n1, "expiry-1", v5=True, clean=False, session_expiry=60)
    assert back.connack[0] is True
    back.close()


def test_message_expiry_applies_to_stored_messages_and_is_forwarded(fleet):
    n1, n2 = fleet.node_ports
    sub = Client(n1, "msgexp-1", v5=True, clean=True, session_expiry=60)
    sub.subscribe(("exp/m", 1))
    sub.close()
    time.sleep(0.2)
    pub = Client(n2, "msgexp-pub", v5=True)
    pub.publish("exp/m", b"short", qos=1, props=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish("exp/m", b"long", qos=1, props=props(PacketTypes.PUBLISH, MessageExpiryInterval=100))
    time.sleep(2.1)
    again = Client(n2, "msgexp-1", v5=True, clean=False, session_expiry=60)
    message = again.expect(1)[0]
    assert message.payload == b"long"
    assert 95 <= message.properties.MessageExpiryInterval <= 99
    again.expect_none(0.3)
    again.close()
    pub.close()


def test_assigned_client_identifier(fleet):
    client = Client(fleet.lb_mqtt, "", v5=True)
    assigned = client.connack[2].AssignedClientIdentifier
    assert assigned, client.connack
    client.close()


# ------------------------------------------------------------- QoS 2 and flow control

def test_qos2_from_a_terminal_is_routed_exactly_once(fleet):
    n1, n2 = fleet.node_ports
    sub = Client(n2, "q2-sub")
    sub.subscribe(("q2/t", 2))
    settle()
    raw = RawMQTT(n1)
    assert raw.connect("q2-pub") == (0x20, b"\x00\x00")
    raw.publish("q2/t", b"once", qos=2, packet_id=7)
    assert raw.read() == (0x50, b"\x00\x07")  # PUBREC
    raw.publish("q2/t", b"once", qos=2, packet_id=7, dup=True)  # resent before PUBREL
    assert raw.read() == (0x50, b"\x00\x07")
    raw.send(0x62, b"\x00\x07")  # PUBREL
    assert raw.read() == (0x70, b"\x00\x07")  # PUBCOMP
    assert [m.payload for m in sub.expect(1)] == [b"once"]
    sub.expect_none()
    raw.close()
    sub.close()


def test_receive_maximum_exceeded_gets_disconnect_0x93(fleet):
    raw = RawMQTT(fleet.node_ports[0])
    ack = raw.connect("recvmax-1", level=5)
    assert ack[1][1] == 0
    receive_maximum = 64  # the node's default, announced in CONNACK
    assert b"\x21" + receive_maximum.to_bytes(2, "big") in ack[1]
    for packet_id in range(1, receive_maximum + 2):
        raw.publish("recv/max", b"x", qos=2, packet_id=packet_id)  # never PUBREL
    codes = []
    deadline = time.time() + 20
    while time.time() < deadline:
        packet = raw.read()
        if packet is None:
            break
        codes.append(packet)
    assert codes[-1][0] == 0xE0 and codes[-1][1][:1] == b"\x93", codes[-3:]
    raw.close()


def test_client_receive_maximum_limits_unacknowledged_deliveries(fleet):
    n1, n2 = fleet.node_ports
    raw = RawMQTT(n1)
    assert raw.connect("recv-client", level=5, props=b"\x21\x00\x02")[1][1] == 0  # receive maximum 2
    raw.send(0x82, b"\x00\x01\x00" + RawMQTT.string("rm/t") + b"\x01")
    assert raw.read()[0] == 0x90
    settle()
    pub = Client(n2, "recv-pub")
    for index in range(5):
        pub.publish("rm/t", str(index).encode(), qos=1)
    first = [parse_publish(*raw.read(), level=5) for _ in range(2)]
    assert [p["payload"] for p in first] == [b"0", b"1"]
    assert_silent(raw, "a third unacknowledged PUBLISH came", wait=0.7)
    raw.puback(first[0]["id"])
    assert parse_publish(*raw.read(), level=5)["payload"] == b"2"
    raw.close()
    pub.close()


def test_maximum_packet_size_both_ways(fleet):
    n1, n2 = fleet.node_ports
    small = Client(n1, "maxpkt-sub", v5=True, connect_props=props(PacketTypes.CONNECT, MaximumPacketSize=100))
    small.subscribe(("big/+", 0))
    settle()
    pub = Client(n2, "maxpkt-pub", v5=True)
    pub.publish("big/a", b"x" * 200, qos=1)  # larger than the subscriber takes: discarded for it
    pub.publish("big/b", b"small", qos=1)
    assert [m.payload for m in small.expect(1)] == [b"small"]
    small.close()
    pub.close()
    # Larger than the node's --max-packet-size (262144 by default): DISCONNECT 0x95.
    raw = RawMQTT(n2)
    assert raw.connect("maxpkt-raw", level=5)[1][1] == 0
    raw.publish("big/c", b"x" * 300_000, qos=0)
    disconnect = raw.read()
    assert disconnect[0] == 0xE0 and disconnect[1][:1] == b"\x95", disconnect
    raw.close()


def test_topic_aliases_both_ways(fleet):
    n1, n2 = fleet.node_ports
    receiver = RawMQTT(n1)
    aliases = b"\x22" + (5).to_bytes(2, "big")  # topic alias maximum 5
    assert receiver.connect("alias-sub", level=5, props=aliases)[1][1] == 0
    receiver.send(0x82, b"\x00\x01\x00" + RawMQTT.string("alias/#") + b"\x00")
    assert receiver.read()[0] == 0x90
    settle()
    sender = RawMQTT(n2)
    assert sender.connect("alias-pub", level=5)[1][1] == 0
    alias = b"\x23" + (1).to_bytes(2, "big")
    sender.publish("alias/long/topic/name", b"first", props=alias)
    sender.publish("", b"second", props=alias)  # the alias stands for the topic
    seen = [parse_publish(*receiver.read(), level=5) for _ in range(2)]
    assert seen[0]["topic"] == "alias/long/topic/name" and b"\x23\x00\x01" in seen[0]["props"], seen[0]
    assert seen[1]["topic"] == "" and b"\x23\x00\x01" in seen[1]["props"], seen[1]
    assert [s["payload"] for s in seen] == [b"first", b"second"]
    # An alias over the maximum the node announced is a protocol error: DISCONNECT 0x94.
    sender.publish("alias/x", b"bad", props=b"\x23" + (1000).to_bytes(2, "big"))
    disconnect = sender.read()
    assert disconnect[0] == 0xE0 and disconnect[1][:1] == b"\x94", disconnect
    assert b"\x1f" in disconnect[1] and b"topic alias 1000" in disconnect[1], disconnect  # with a reason string
    sender.close()
    receiver.close()


def test_no_local_and_forwarded_properties(fleet):
    n1, n2 = fleet.node_ports
    me = Client(n1, "nolocal-1", v5=True)
    assert me.subscribe(("chat/room", mqtt.SubscribeOptions(qos=1, noLocal=True))) == [1]
    other = Client(n2, "nolocal-2", v5=True)
    assert other.subscribe(("chat/room", 1)) == [1]
    settle()
    sent = props(PacketTypes.PUBLISH, ResponseTopic="chat/reply", CorrelationData=b"\x01\x02", ContentType="text/plain",
                 PayloadFormatIndicator=1, UserProperty=[("a", "1"), ("a", "2")])
    me.publish("chat/room", "héllo".encode(), qos=1, props=sent)
    got = other.expect(1)[0]
    assert got.payload == "héllo".encode()
    p = got.properties
    assert (p.ResponseTopic, p.CorrelationData, p.ContentType, p.PayloadFormatIndicator) == (
        "chat/reply", b"\x01\x02", "text/plain", 1)
    assert p.UserProperty == [("a", "1"), ("a", "2")]
    me.expect_none()  # no local: not back to its publisher
    # A payload that claims to be UTF-8 and is not: PUBACK 0x99.
    assert me.publish("chat/room", b"\xff\xfe", qos=1, props=props(PacketTypes.PUBLISH, PayloadFormatIndicator=1)) == 0x99
    me.close()
    other.close()


def test_mosquitto_clients_through_haproxy_round_robin(fleet):
    subs = [subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(fleet.lb_mqtt), "-i", f"mosq-sub-{i}",
                              "-t", "lb/topic", "-q", "1", "-C", "1", "-W", "15"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    wait_for(lambda: all(fleet.redis_cli("EXISTS", f"pushfleet:{{t:mosq-sub-{i}}}:route") == "1" for i in range(4)),
             what="mosquitto_sub connected")
    nodes = {fleet.redis_cli("GET", f"pushfleet:{{t:mosq-sub-{i}}}:route").split("|")[0] for i in range(4)}
    assert nodes == {"n1", "n2"}, nodes  # round robin spread them
    time.sleep(0.3)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(fleet.lb_mqtt), "-t", "lb/topic", "-m", "via lb",
                    "-q", "1"], check=True, timeout=10)
    for sub in subs:
        out, _ = sub.communicate(timeout=20)
        assert out.strip() == "via lb", out


# ------------------------------------------------------------- transports

def test_websocket_and_tls_clients_share_routing_and_sessions_with_tcp_clients(fleet):
    (n1, n2), ports, ca = fleet.node_ports, fleet.transport_ports, fleet.ca
    ws = Client(ports["ws"][0], "ws-sub", v5=True, transport="ws")
    ws.subscribe(("tr/#", 1))
    secure = Client(ports["wss"][1], "wss-sub", transport="wss", ca=ca)
    secure.subscribe(("tr/#", 1))
    mosquitto = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(ports["tls"][1]), "--cafile", ca,
                                  "-i", "tls-sub", "-t", "tr/#", "-q", "1", "-C", "1", "-W", "15"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: fleet.redis_cli("EXISTS", "pushfleet:{t:tls-sub}:route") == "1", what="mosquitto_sub over TLS")
    settle()
    pub = Client(n2, "tr-pub")
    pub.publish("tr/x", b"everywhere", qos=1)
    assert ws.expect(1)[0].payload == b"everywhere"
    assert secure.expect(1)[0].payload == b"everywhere"
    out, _ = mosquitto.communicate(timeout=20)
    assert out.strip() == "everywhere", out
    # A persistent session started over WebSocket continues over TLS on the other node.
    ws.close()
    first = Client(ports["ws"][0], "tr-persist", transport="ws", clean=False)
    first.subscribe(("tr/p", 1))
    first.close()
    time.sleep(0.2)
    pub.publish("tr/p", b"kept", qos=1)
    again = Client(ports["tls"][1], "tr-persist", transport="tls", ca=ca, clean=False)
    assert again.connack[0] is True
    assert again.expect(1)[0].payload == b"kept"
    for client in (secure, pub, again):
        client.close()


def test_websocket_listener_refuses_other_paths_and_plain_http(fleet):
    port = fleet.transport_ports["ws"][0]
    for path, status in (("/", 404), ("/mqtt", 400)):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
            raise AssertionError(f"{path} answered 200")
        except urllib.error.HTTPError as error:
            assert error.code == status, (path, error.code)


def test_server_keep_alive_caps_mqtt5_clients(fleet):
    forever = Client(fleet.node_ports[0], "ka-forever", v5=True, keepalive=0)
    assert forever.connack[2].ServerKeepAlive == 600  # the fleet runs with --max-keepalive 600
    modest = Client(fleet.node_ports[1], "ka-modest", v5=True, keepalive=60)
    assert not hasattr(modest.connack[2], "ServerKeepAlive")
    forever.close()
    modest.close()


def test_shed_asks_clients_to_use_another_server(fleet):
    shed = Client(fleet.node_ports[0], "shed-1", v5=True)
    request = urllib.request.Request(f"http://127.0.0.1:{fleet.admin_ports[0]}/v1/shed?count=1000", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["shed"] >= 1
    wait_for(lambda: shed.disconnect_reason is not None, what="DISCONNECT")
    assert shed.disconnect_reason == 0x9C, hex(shed.disconnect_reason)
    shed.client.loop_stop()


def test_zz_persistent_subscriber_of_a_killed_node_gets_what_was_published_meanwhile(fleet):
    n1, n2 = fleet.node_ports
    raw = RawMQTT(n2)
    assert raw.connect("crash-sub", clean=False) == (0x20, b"\x00\x00")
    assert raw.subscribe("crash/t", 1)[0] == 0x90
    settle()
    fleet.kill("node2")  # SIGKILL: the session's route still names n2
    pub = Client(n1, "crash-pub")
    assert pub.publish("crash/t", b"while you were down", qos=1) == 0
    raw.close()
    again = RawMQTT(n1)
    assert again.connect("crash-sub", clean=False) == (0x20, b"\x01\x00")
    message = parse_publish(*again.read())
    assert message["payload"] == b"while you were down", message
    again.puback(message["id"])
    again.close()
    pub.close()
    fleet.restart("node2")
    wait_for(lambda: http_status(f"http://127.0.0.1:{fleet.admin_ports[1]}/readyz") == 200, what="node2 back")


# ------------------------------------------------------------- topic ACL (credentials fleet)

def test_proxy_protocol_names_the_terminal_and_refuses_connections_without_a_header(fleet):
    """Push nodes with --proxy-protocol behind haproxy sending PROXY headers (version 2 to the
    first node, version 1 to the second): terminals connect through it as usual, the nodes log
    the terminal's own address rather than haproxy's, and a connection straight to a node,
    without a header, is closed without a CONNACK."""
    password = fleet.credential("px-1")
    seen = set()
    for _ in range(8):
        client = RawMQTT(fleet.lb_mqtt)
        assert client.connect("px-1", password) == (0x20, b"\x00\x00")
        seen.add(fleet.redis_cli("GET", "pushfleet:{t:px-1}:route").split("|")[0])
        client.close()
    assert seen == {"n1", "n2"}, seen
    # A refused CONNECT from 127.0.0.7, through haproxy to each node: logged with that address.
    for _ in range(2):
        refused = RawMQTT(fleet.lb_mqtt, source="127.0.0.7")
        first, body = refused.connect("px-2", "v1.1.2.bad")
        assert first == 0x20 and body[1] in (4, 5), (first, body)
        refused.close()

    def logged(node):
        with open(os.path.join(fleet.dir, f"{node}.log")) as f:
            return [line for line in f if "connect refused" in line and "peer=127.0.0.7:" in line]
    wait_for(lambda: logged("node1") and logged("node2"), what="both nodes log the terminal's address")
    # Straight to a node: no header, no CONNACK, closed.
    direct = RawMQTT(fleet.node_ports[0])
    direct.sock.sendall(RawMQTT.packet(0x10, RawMQTT.string("MQTT") + bytes([4, 2, 0, 60]) + RawMQTT.string("px-3")))
    assert direct.read() is None
    direct.close()
    with open(os.path.join(fleet.dir, "node1.log")) as f:
        assert "connection without a valid PROXY header closed" in f.read()


def test_acl_subscribe_and_publish_rules(fleet):
    n1, n2 = fleet.node_ports
    listener = Client(n1, "acl-listen", v5=True, username="acl-listen", password=fleet.credential("acl-listen"))
    # Allowed: its own push topic, broadcast, public filters and narrower ones.
    assert listener.subscribe(("push/acl-listen", 1), ("broadcast", 1), ("news/sport/+", 1), ("chat/#", 1),
                              ("dev/+/up", 1)) == [1, 1, 1, 1, 1]
    # Refused (MQTT 5: 0x87): someone else's push topic, everything, more than a public filter covers.
    assert listener.subscribe(("push/other", 1), ("#", 1), ("dev/other/#", 1)) == [0x87, 0x87, 0x87]
    assert listener.ack_properties[listener.last_mid].ReasonString == "not allowed to subscribe to push/other, #, dev/other/#"
    v3 = RawMQTT(n2)
    assert v3.connect("acl-v3", fleet.credential("acl-v3")) == (0x20, b"\x00\x00")
    assert v3.subscribe("secret/#", 1) == (0x90, b"\x00\x01\x80")  # MQTT 3.1.1: 0x80
    talker = Client(n2, "acl-talk", v5=True, username="acl-talk", password=fleet.credential("acl-talk"))
    settle()
    assert talker.publish("news/sport/x", b"nope", qos=1) == 0x87  # subscribable, not publishable
    assert talker.ack_properties[talker.last_mid].ReasonString == "not allowed to publish to news/sport/x"
    assert talker.publish("chat/lobby", b"hello", qos=1) == 0
    assert talker.publish("dev/acl-talk/up", b"mine", qos=1) == 0  # %c: its own id
    assert talker.publish("dev/acl-listen/up", b"not mine", qos=1) == 0x87
    assert [(m.topic, m.payload) for m in listener.expect(2)] == [("chat/lobby", b"hello"), ("dev/acl-talk/up", b"mine")]
    # MQTT 3.1.1 cannot refuse a PUBLISH: it is acknowledged and dropped.
    v3.publish("news/sport/y", b"dropped", qos=1, packet_id=3)
    assert v3.read() == (0x40, b"\x00\x03")
    listener.expect_none()
    listener.close()
    talker.close()
    v3.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("-k", default="")
    args = parser.parse_args()
    for tool in ["redis-server", "redis-cli", "haproxy", "mosquitto_sub", "mosquitto_pub"]:
        if not shutil.which(tool):
            sys.exit(f"mqtt: {tool} is not installed")
    certificates = tempfile.mkdtemp(prefix="pushfleet-certs-")
    ca, certificate, key = make_certificates(certificates)

    def anonymous():
        transport_ports = {name: [free_port(), free_port()] for name in ("ws", "tls", "wss")}

        def node_args(index):
            return ["--allow-anonymous", "--max-keepalive", "600", "--tls-cert", certificate, "--tls-key", key,
                    *[arg for name, ports in transport_ports.items() for arg in (f"--{name}", f"127.0.0.1:{ports[index]}")]]

        fleet = Fleet(args.bin, node_args=node_args)
        fleet.transport_ports, fleet.ca = transport_ports, ca
        return fleet

    fleets = {
        "anonymous": anonymous,
        "acl": lambda: Fleet(args.bin, node_args=["--public-topics", "news/#,chat/#,dev/+/up", "--publish-topics", "chat/+,dev/%c/up"]),
        "proxy": lambda: Fleet(args.bin, proxy_protocol=True),
    }

    def fleet_of(name):
        for prefix in ("acl", "proxy"):
            if name.startswith(f"test_{prefix}"):
                return prefix
        return "anonymous"
    tests = [(name, fn, fleet_of(name)) for name, fn in globals().items() if name.startswith("test_") and args.k in name]
    tests.sort(key=lambda test: ["anonymous", "acl", "proxy"].index(test[2]))
    try:
        run_suite("mqtt", tests, fleets)
    finally:
        shutil.rmtree(certificates, ignore_errors=True)


if __name__ == "__main__":
    main()
