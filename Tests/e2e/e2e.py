#!/usr/bin/env python3
"""End-to-end test: the real processes behind Debian's haproxy.

Starts redis-server, one control node and two push nodes (the `pushfleet` binary), haproxy in
front of the push nodes' MQTT ports (round robin) and the control HTTP port, then drives them
with mosquitto_sub, curl, redis-cli and paho-mqtt. Every port is on 127.0.0.1.

Usage: python3 Tests/e2e/e2e.py --bin .build/debug/pushfleet
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request


from fleet import Fleet, RawMQTT, http_status, mqtt5_client, parse_publish, run_suite, wait_for

def mosquitto_sub(port, terminal, password, count, extra=()):
    return subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", terminal, "-u", terminal,
                             "-P", password, "-t", f"push/{terminal}", "-q", "1", "-C", str(count), "-W", "20", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def route_node(fleet, terminal):
    """The node in the terminal's route (`node|epoch|connectedAt`), "" when it has none."""
    return fleet.redis_cli("GET", f"pushfleet:{{t:{terminal}}}:route").split("|")[0]


# ---------------------------------------------------------------- scenarios

def test_push_with_curl_and_redis_cli_reaches_mosquitto_sub(fleet):
    password = fleet.credential("phone-1")
    sub = mosquitto_sub(fleet.lb_mqtt, "phone-1", password, 2)
    wait_for(lambda: route_node(fleet, "phone-1"), what="phone-1 online")
    curl = subprocess.run(["curl", "-s", "-X", "POST", f"http://127.0.0.1:{fleet.lb_http}/v1/push",
                           "-H", "Content-Type: application/json",
                           "-d", json.dumps({"to": ["phone-1"], "payload": "hello from curl"})],
                          capture_output=True, text=True, check=True)
    message_id = json.loads(curl.stdout)["id"]
    fleet.redis_cli("XADD", "pushfleet:push", "*", "to", "phone-1", "payload", "hello from redis-cli")
    out, _ = sub.communicate(timeout=25)
    assert out.splitlines() == ["hello from curl", "hello from redis-cli"], out
    # The PUBACK was recorded.
    status = wait_for(lambda: (lambda s: s if s[1]["acknowledged"] == 1 else None)(fleet.api("GET", f"/v1/messages/{message_id}")),
                      what="acknowledged status")
    assert status[0] == 200
    body = status[1]
    assert body["targets"] == 1 and body["delivered"] == 1 and body["queued"] == 0, body
    assert body["terminals"] == {"phone-1": "acknowledged"}, body


def test_offline_terminal_gets_every_message_in_order_on_the_other_node(fleet):
    password = fleet.credential("tv-7")
    # Connect to node 1 with clean session off, then leave.
    first = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(fleet.node_ports[0]), "-i", "tv-7", "-u", "tv-7",
                            "-P", password, "-t", "push/tv-7", "-q", "1", "-c", "-W", "1"], capture_output=True, text=True)
    assert "not authori" not in first.stdout + first.stderr
    wait_for(lambda: not route_node(fleet, "tv-7"), what="tv-7 offline")
    ids = []
    for index in range(5):
        status, body = fleet.api("POST", "/v1/push", {"to": ["tv-7"], "payload": f"m{index}", "ttl": 600})
        assert status == 202, body
        ids.append(body["id"])
    status, body = fleet.api("GET", f"/v1/terminals/tv-7")
    assert body["online"] is False and body["queued"] == 5, body
    # Reconnect to node 2: everything pushed while away, in order.
    sub = mosquitto_sub(fleet.node_ports[1], "tv-7", password, 5, extra=("-c",))
    out, _ = sub.communicate(timeout=25)
    assert out.splitlines() == [f"m{i}" for i in range(5)], out
    try:
        wait_for(lambda: fleet.api("GET", f"/v1/terminals/tv-7")[1]["queued"] == 0, what="list drained after PUBACKs")
    except AssertionError as error:
        # Seen about once in ten suite runs and not reproduced alone: say what was left.
        left = fleet.redis_cli("LRANGE", "pushfleet:{t:tv-7}:queue", "0", "-1")
        sent = fleet.redis_cli("HGETALL", "pushfleet:{t:tv-7}:sent")
        raise AssertionError(f"{error}; still stored: {left!r}; sent: {sent!r}; ids: {ids}") from error
    for message_id in ids:
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{message_id}")[1]["acknowledged"] == 1, what="acknowledged")


def test_collapse_keys_leave_an_offline_terminal_the_latest_of_each(fleet):
    """A terminal offline during 100 pushes over 3 collapse keys (60 through /v1/push, 30 in
    a batch, 10 through the command stream) receives exactly 3 messages, the latest of each,
    in the order they were pushed; every earlier one is `replaced`."""
    password = fleet.credential("tv-c")
    ids = []
    for index in range(60):
        status, body = fleet.api("POST", "/v1/push", {"to": ["tv-c"], "payload": f"score {index}", "collapseKey": f"k{index % 3}",
                                                      "ttl": 600})
        assert status == 202, body
        ids.append(body["id"])
    batch = [{"to": ["tv-c"], "payload": f"score {index}", "collapseKey": f"k{index % 3}", "ttl": 600} for index in range(60, 90)]
    status, body = fleet.api("POST", "/v1/push/batch", {"messages": batch})
    assert status == 202 and all("id" in result for result in body["results"]), body
    ids += [result["id"] for result in body["results"]]
    for index in range(90, 100):
        ids.append(fleet.redis_cli("XADD", "pushfleet:push", "*", "to", "tv-c", "payload", f"score {index}", "collapse", f"k{index % 3}"))
    wait_for(lambda: fleet.api("GET", f"/v1/messages/{ids[-1]}")[0] == 200, what="the last stream entry handled")
    assert fleet.api("GET", "/v1/terminals/tv-c")[1]["queued"] == 3
    # Topic and broadcast pushes cannot collapse; a key needs a ttl.
    assert fleet.api("POST", "/v1/push", {"topic": "news/x", "payload": "x", "collapseKey": "k"})[0] == 400
    assert fleet.api("POST", "/v1/push", {"to": ["tv-c"], "payload": "x", "collapseKey": "k", "ttl": 0})[0] == 400
    assert fleet.api("POST", "/v1/push", {"to": ["tv-c"], "payload": "x", "collapseKey": "k" * 129})[0] == 400
    sub = mosquitto_sub(fleet.node_ports[1], "tv-c", password, 3)
    out, _ = sub.communicate(timeout=25)
    assert out.splitlines() == ["score 97", "score 98", "score 99"], out
    wait_for(lambda: fleet.api("GET", "/v1/terminals/tv-c")[1]["queued"] == 0, what="tv-c's list empty: nothing more waited")
    for index in (0, 59, 60, 89, 90, 96):
        status = fleet.api("GET", f"/v1/messages/{ids[index]}")[1]
        assert status["replaced"] == 1 and status["terminals"] == {"tv-c": "replaced"}, (index, status)
    for index in (97, 98, 99):
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{ids[index]}")[1]["acknowledged"] == 1, what=f"push {index} acknowledged")


def test_a_cancelled_push_reaches_nobody_who_was_offline(fleet):
    """DELETE /v1/messages/{id}: the copies waiting for offline terminals are withdrawn (they
    never arrive), one acknowledged is gone, one sent and not acknowledged is left in flight;
    the status says so. A push to 1,001 terminals (one past the cancellation's pipeline of
    1,000) is withdrawn everywhere. Topic pushes cannot be; unknown ids are 404."""
    received = []
    online = mqtt5_client(fleet, "cx-on", fleet.node_ports[0], on_message=lambda m: received.append(m.payload))
    holder = RawMQTT(fleet.node_ports[1])
    assert holder.connect("cx-hold", fleet.credential("cx-hold")) == (0x20, b"\x00\x00")
    try:
        wait_for(lambda: route_node(fleet, "cx-on") == "n1", what="cx-on online")
        targets = ["cx-on", "cx-hold", "cx-off-1", "cx-off-2", "cx-off-3"]
        status, receipt = fleet.api("POST", "/v1/push", {"to": targets, "payload": "withdraw me", "qos": 1, "ttl": 600})
        assert status == 202, receipt
        message_id = receipt["id"]
        wait_for(lambda: received == [b"withdraw me"], what="cx-on's copy")
        first, body = holder.read()
        assert first >> 4 == 3 and parse_publish(first, body)["payload"] == b"withdraw me"  # held: no PUBACK
        wait_for(lambda: fleet.redis_cli("HEXISTS", "pushfleet:{t:cx-hold}:sent", message_id) == "1", what="cx-hold's copy recorded in flight")
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{message_id}")[1]["acknowledged"] == 1, what="cx-on's acknowledgement")
        status, outcome = fleet.api("DELETE", f"/v1/messages/{message_id}")
        assert status == 200 and outcome == {"id": message_id, "targets": 5, "withdrawn": 3, "inFlight": 1, "gone": 1}, outcome
        body = fleet.api("GET", f"/v1/messages/{message_id}")[1]
        assert body["withdrawn"] == 3 and body["cancelledAt"] > 0, body
        assert {t: body["terminals"][t] for t in ["cx-off-1", "cx-off-2", "cx-off-3"]} == {f"cx-off-{i}": "withdrawn" for i in (1, 2, 3)}
        late = []
        away = mqtt5_client(fleet, "cx-off-1", fleet.node_ports[1], on_message=lambda m: late.append(m.payload))
        try:
            wait_for(lambda: route_node(fleet, "cx-off-1") == "n2", what="cx-off-1 online")
            time.sleep(1.5)
            assert late == [], late
            assert fleet.api("GET", "/v1/terminals/cx-off-1")[1]["queued"] == 0
        finally:
            away.disconnect()
            away.loop_stop()
    finally:
        holder.close()
        online.disconnect()
        online.loop_stop()
    many = [f"cx-many-{i}" for i in range(1001)]
    status, receipt = fleet.api("POST", "/v1/push", {"to": many, "payload": "x", "ttl": 600})
    assert status == 202, receipt
    status, outcome = fleet.api("DELETE", f"/v1/messages/{receipt['id']}")
    assert status == 200 and outcome["withdrawn"] == 1001 and outcome["gone"] == 0, outcome
    assert fleet.redis_cli("EXISTS", "pushfleet:{t:cx-many-1000}:queue") == "0"
    status, receipt = fleet.api("POST", "/v1/push", {"topic": "news/cx", "payload": "x"})
    assert fleet.api("DELETE", f"/v1/messages/{receipt['id']}")[0] == 409
    assert fleet.api("DELETE", "/v1/messages/1-0-unknown")[0] == 404


def test_queue_inspection_pages_and_one_entry_withdrawn(fleet):
    """GET /v1/terminals/{id}/queue pages through what waits (limit 1-500); DELETE of one
    entry takes it out (withdrawn in its status), a second DELETE is 404."""
    ids = []
    for index in range(3):
        status, body = fleet.api("POST", "/v1/push", {"to": ["qx-away"], "payload": f"q{index}", "collapseKey": f"k{index}", "ttl": 600})
        assert status == 202, body
        ids.append(body["id"])
    first = fleet.api("GET", "/v1/terminals/qx-away/queue?limit=2")[1]
    assert first["total"] == 3 and [e["id"] for e in first["entries"]] == ids[:2], first
    assert first["entries"][0]["collapseKey"] == "k0" and first["entries"][0]["size"] == 2 and first["entries"][0]["qos"] == 1
    assert 0 <= first["entries"][0]["age"] <= 5, first
    second = fleet.api("GET", "/v1/terminals/qx-away/queue?offset=2&limit=2")[1]
    assert [e["id"] for e in second["entries"]] == ids[2:], second
    assert fleet.api("GET", "/v1/terminals/qx-away/queue?limit=500")[0] == 200
    assert fleet.api("GET", "/v1/terminals/qx-away/queue?limit=501")[0] == 400
    assert fleet.api("GET", "/v1/terminals/qx-away/queue?offset=-1")[0] == 400
    assert fleet.api("DELETE", f"/v1/terminals/qx-away/queue/{ids[1]}")[0] == 204
    assert [e["id"] for e in fleet.api("GET", "/v1/terminals/qx-away/queue")[1]["entries"]] == [ids[0], ids[2]]
    assert fleet.api("GET", f"/v1/messages/{ids[1]}")[1]["terminals"] == {"qx-away": "withdrawn"}
    assert fleet.api("DELETE", f"/v1/terminals/qx-away/queue/{ids[1]}")[0] == 404


def test_a_scheduled_push_survives_the_death_of_the_control_node_that_accepted_it(fleet):
    """A push with `delay` is `scheduled` until due, then pushed by whichever control node is
    alive: the one that accepted it is SIGKILLed at once, and both the terminal online and
    the one offline until after it was due get it. A cancelled scheduled push goes to nobody.
    Bad times are refused."""
    from fleet import SECRET, free_port, wait_port
    port = free_port()
    fleet.start("control-sched", [fleet.binary, "control", "--redis", f"redis://127.0.0.1:{fleet.redis_port}", "--listen",
                                  f"127.0.0.1:{port}", "--consumer", "csched"], env={"PUSHFLEET_SECRET": SECRET})
    wait_port(port)
    received = []
    client = mqtt5_client(fleet, "sched-on", fleet.node_ports[0], on_message=lambda m: received.append(m.payload))
    try:
        wait_for(lambda: route_node(fleet, "sched-on") == "n1", what="sched-on online")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/push", method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"to": ["sched-on", "sched-off"], "payload": "later", "delay": 3}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            receipt = json.loads(response.read())
        fleet.kill("control-sched")
        fleet.procs.pop("control-sched")  # dead on purpose: later tests check the fleet's processes are alive
        accepted = time.time()
        status = fleet.api("GET", f"/v1/messages/{receipt['id']}")[1]
        assert status["scheduled"] is True and status["targets"] == 2 and status["queued"] == 0, status
        assert abs(status["scheduledAt"] - receipt["scheduledAt"]) == 0 and receipt["targets"] == 2, (status, receipt)
        wait_for(lambda: received == [b"later"], timeout=15, what="the scheduled push, from the surviving control node")
        assert time.time() - accepted >= 2.5, "not before it was due"
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{receipt['id']}")[1]["acknowledged"] == 1, what="acknowledged")
        assert "scheduled" not in fleet.api("GET", f"/v1/messages/{receipt['id']}")[1]
    finally:
        client.disconnect()
        client.loop_stop()
    # sched-off connects after it was due: it waited in its list.
    late = mosquitto_sub(fleet.node_ports[1], "sched-off", fleet.credential("sched-off"), 1)
    out, _ = late.communicate(timeout=25)
    assert out.splitlines() == ["later"], out
    # Cancelled before it is due: withdrawn everywhere, nothing stored, its status says so.
    status, receipt = fleet.api("POST", "/v1/push", {"to": ["sched-x1", "sched-x2"], "payload": "never", "delay": 60})
    assert status == 202, receipt
    status, outcome = fleet.api("DELETE", f"/v1/messages/{receipt['id']}")
    assert status == 200 and outcome["withdrawn"] == 2 and outcome["gone"] == 0, outcome
    status = fleet.api("GET", f"/v1/messages/{receipt['id']}")[1]
    assert status["scheduled"] is False and status["cancelledAt"] > 0, status
    assert fleet.redis_cli("ZSCORE", "pushfleet:{sched}:due", receipt["id"]) == ""
    # In the past: pushed now. Past the horizon, or both times: refused.
    status, body = fleet.api("POST", "/v1/push", {"to": ["sched-now"], "payload": "now", "sendAt": int(time.time()) - 10})
    assert status == 202 and "scheduledAt" not in body, body
    assert fleet.api("POST", "/v1/push", {"to": ["sched-now"], "payload": "x", "delay": 30 * 86400 + 1})[0] == 400
    assert fleet.api("POST", "/v1/push", {"to": ["sched-now"], "payload": "x", "delay": 5, "sendAt": int(time.time()) + 5})[0] == 400
    # The batch endpoint schedules too.
    status, body = fleet.api("POST", "/v1/push/batch", {"messages": [{"to": ["sched-b"], "payload": "b", "delay": 1},
                                                                     {"to": ["sched-b"], "payload": "c"}]})
    assert status == 202 and all("id" in r for r in body["results"]), body
    wait_for(lambda: fleet.api("GET", "/v1/terminals/sched-b")[1]["queued"] == 2, what="the batch's scheduled push stored when due")


def test_a_command_stream_entry_with_delay_is_scheduled_under_its_entry_id(fleet):
    """`XADD pushfleet:push * to ... delay N` (or `sendat`): the push waits, `scheduled` under
    the entry id, and goes out when due, to an online terminal and, through its list, to one
    that connects later; an entry cancelled before it is due reaches nobody; one scheduled past
    the status retention (7 days by default) is refused with an error status."""
    received = []
    client = mqtt5_client(fleet, "ssched-on", fleet.node_ports[0], on_message=lambda m: received.append(m.payload))
    try:
        wait_for(lambda: route_node(fleet, "ssched-on") == "n1", what="ssched-on online")
        entry = fleet.redis_cli("XADD", "pushfleet:push", "*", "to", "ssched-on,ssched-off", "payload", "from the stream", "delay", "2")
        added = time.time()
        cancelled = fleet.redis_cli("XADD", "pushfleet:push", "*", "to", "ssched-off", "payload", "never",
                                    "sendat", str(int(time.time()) + 60))
        status = wait_for(lambda: (lambda s: s[1] if s[0] == 200 else None)(fleet.api("GET", f"/v1/messages/{entry}")),
                          what="the entry's status")
        assert status["scheduled"] is True and status["targets"] == 2 and status["queued"] == 0, status
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{cancelled}")[0] == 200, what="the second entry's status")
        status, outcome = fleet.api("DELETE", f"/v1/messages/{cancelled}")
        assert status == 200 and outcome["withdrawn"] == 1, outcome
        wait_for(lambda: received == [b"from the stream"], timeout=15, what="the scheduled entry")
        assert time.time() - added >= 1.5, "not before it was due"
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{entry}")[1]["acknowledged"] == 1, what="acknowledged")
    finally:
        client.disconnect()
        client.loop_stop()
    late = mosquitto_sub(fleet.node_ports[1], "ssched-off", fleet.credential("ssched-off"), 1)
    out, _ = late.communicate(timeout=25)
    assert out.splitlines() == ["from the stream"], out
    wait_for(lambda: fleet.api("GET", "/v1/terminals/ssched-off")[1]["queued"] == 0, what="ssched-off's list drained after its PUBACK")
    # One day past the status retention (604800 s): refused, its status says why.
    far = fleet.redis_cli("XADD", "pushfleet:push", "*", "to", "ssched-far", "payload", "x", "delay", str(8 * 86400))
    status = wait_for(lambda: (lambda s: s[1] if s[0] == 200 else None)(fleet.api("GET", f"/v1/messages/{far}")), what="far's status")
    assert "604800 seconds (--status-retention" in status.get("error", ""), status
    assert fleet.redis_cli("ZSCORE", "pushfleet:{sched}:due", far) == ""


def test_status_events_match_the_message_status(fleet):
    """With --status-events on every node, each state a target reaches is appended to the
    stream pushfleet:events (an entry per status write, its events in a JSON array):
    acknowledged (an online terminal), dropped (online-only to an
    absent one), replaced (a collapse key), withdrawn (a cancel). The last event of each copy is
    its state in GET /v1/messages/{id}. Runs on its own fleet (its nodes have the option)."""
    received = []
    client = mqtt5_client(fleet, "ev-on", fleet.node_ports[0], on_message=lambda m: received.append(m.payload))
    try:
        wait_for(lambda: route_node(fleet, "ev-on") == "n1", what="ev-on online")
        ids = []
        for body in [{"to": ["ev-on", "ev-off"], "payload": "both", "ttl": 600},
                     {"to": ["ev-off"], "payload": "online only", "ttl": 0},
                     {"to": ["ev-off"], "payload": "old score", "collapseKey": "score", "ttl": 600},
                     {"to": ["ev-off"], "payload": "new score", "collapseKey": "score", "ttl": 600},
                     {"to": ["ev-off"], "payload": "cancel me", "ttl": 600}]:
            status, receipt = fleet.api("POST", "/v1/push", body)
            assert status == 202, receipt
            ids.append(receipt["id"])
        assert fleet.api("DELETE", f"/v1/messages/{ids[4]}")[0] == 200
        wait_for(lambda: b"both" in received, what="ev-on's message")
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{ids[0]}")[1]["acknowledged"] == 1, what="acknowledged")
    finally:
        client.disconnect()
        client.loop_stop()

    def last_events():
        # redis-cli (not on a terminal) prints each entry as its id, then its one field
        # (`events`) and value (a JSON array of events), one a line: 3 lines an entry.
        lines = fleet.redis_cli("XRANGE", "pushfleet:events", "-", "+").splitlines()
        states = {}
        for index in range(0, len(lines) - 2, 3):
            assert lines[index + 1] == "events", lines[index:index + 3]
            for event in json.loads(lines[index + 2]):
                states[(event["message"], event["terminal"])] = event["state"]
        return states
    expected = {}
    for message_id in ids:
        for terminal, state in fleet.api("GET", f"/v1/messages/{message_id}")[1]["terminals"].items():
            if state != "queued":
                expected[(message_id, terminal)] = state
    assert set(expected.values()) == {"acknowledged", "dropped", "replaced", "withdrawn"}, expected
    wait_for(lambda: last_events() == expected, what=f"events matching the statuses {expected}")


def test_wrong_password_is_not_authorized(fleet):
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(fleet.lb_mqtt), "-i", "phone-2", "-u", "phone-2",
                          "-P", "v1.1.2.bad", "-t", "push/phone-2", "-W", "5"], capture_output=True, text=True)
    assert "not authori" in (out.stdout + out.stderr).lower(), out
    # A credential issued to another terminal is refused too.
    stolen = fleet.credential("phone-3")
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(fleet.lb_mqtt), "-i", "phone-2", "-u", "phone-2",
                          "-P", stolen, "-t", "push/phone-2", "-W", "5"], capture_output=True, text=True)
    assert "not authori" in (out.stdout + out.stderr).lower(), out


def test_second_connection_takes_over_across_nodes(fleet):
    events = {"a_disconnected": False, "b_messages": []}
    a = mqtt5_client(fleet, "tab-1", fleet.node_ports[0], on_disconnect=lambda rc: events.__setitem__("a_disconnected", rc))
    wait_for(lambda: route_node(fleet, "tab-1") == "n1", what="tab-1 on n1")
    b = mqtt5_client(fleet, "tab-1", fleet.node_ports[1], on_message=lambda m: events["b_messages"].append((m.payload, m.properties)))
    wait_for(lambda: events["a_disconnected"], what="first connection closed")
    assert str(events["a_disconnected"]) == "Session taken over", events["a_disconnected"]
    a.loop_stop()
    assert route_node(fleet, "tab-1") == "n2"
    status, body = fleet.api("POST", "/v1/push", {"to": ["tab-1"], "payload": "after takeover"})
    wait_for(lambda: events["b_messages"], what="message on the new connection")
    payload, properties = events["b_messages"][0]
    assert payload == b"after takeover"
    assert ("message-id", body["id"]) in properties.UserProperty, properties
    b.loop_stop()
    b.disconnect()


def test_garbage_and_bad_json_get_errors_and_nodes_keep_serving(fleet):
    for port in fleet.node_ports:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            assert s.recv(100) == b"", "garbage must close the connection"
    status, body = fleet.api("POST", "/v1/push", raw=b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json", (status, body)
    status, body = fleet.api("POST", "/v1/push", {"to": ["x"]})
    assert status == 400 and body["error"]["code"] == "invalid_request", (status, body)
    status, body = fleet.api("POST", "/v1/credentials", {"ttl": 5})
    assert status == 400 and "terminal" in body["error"]["message"], (status, body)
    status, body = fleet.api("GET", "/v1/messages/unknown")
    assert status == 404 and body["error"]["code"] == "not_found", (status, body)
    # Still serving: a fresh terminal gets a push through each node.
    for index, port in enumerate(fleet.node_ports):
        terminal = f"after-garbage-{index}"
        sub = mosquitto_sub(port, terminal, fleet.credential(terminal), 1)
        wait_for(lambda: route_node(fleet, terminal), what=f"{terminal} online")
        fleet.api("POST", "/v1/push", {"to": [terminal], "payload": "still here"})
        out, _ = sub.communicate(timeout=25)
        assert out.strip() == "still here", out
    assert all(fleet.alive().values()), fleet.alive()


def test_revoked_credential_is_refused_and_disconnected(fleet):
    password = fleet.credential("revoke-me")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(fleet.lb_mqtt), "-i", "revoke-me", "-u", "revoke-me",
                            "-P", password, "-t", "push/revoke-me", "-W", "20"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: route_node(fleet, "revoke-me"), what="revoke-me online")
    status, _ = fleet.api("DELETE", "/v1/credentials/revoke-me")
    assert status == 204
    out, _ = sub.communicate(timeout=25)
    assert "not authori" in out.lower(), out  # the reconnect with the revoked credential is refused
    # A credential issued after the revocation works.
    fresh = fleet.credential("revoke-me")
    sub = mosquitto_sub(fleet.lb_mqtt, "revoke-me", fresh, 1)
    wait_for(lambda: route_node(fleet, "revoke-me"), what="revoke-me back online")
    fleet.api("POST", "/v1/push", {"to": ["revoke-me"], "payload": "welcome back"})
    out, _ = sub.communicate(timeout=25)
    assert out.strip() == "welcome back", out


def test_unacknowledged_message_is_redelivered_with_dup_after_reconnect(fleet):
    password = fleet.credential("raw-1")
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("raw-1", password) == (0x20, b"\x00\x00")
    wait_for(lambda: route_node(fleet, "raw-1"), what="raw-1 online")
    fleet.api("POST", "/v1/push", {"to": ["raw-1"], "payload": "once", "qos": 1})
    first = parse_publish(*client.read())
    assert first["payload"] == b"once" and first["qos"] == 1 and not first["dup"], first
    client.close()  # no PUBACK
    wait_for(lambda: not route_node(fleet, "raw-1"), what="raw-1 offline")
    again = RawMQTT(fleet.node_ports[1])
    assert again.connect("raw-1", password)[1][1] == 0
    second = parse_publish(*again.read())
    assert second["payload"] == b"once" and second["dup"], second
    assert second["id"] == first["id"], (first, second)  # its original packet id (MQTT 4.4)
    again.puback(second["id"])
    wait_for(lambda: fleet.api("GET", "/v1/terminals/raw-1")[1]["queued"] == 0, what="acknowledged entry removed")
    again.close()


def test_qos0_push_is_delivered_without_packet_id(fleet):
    password = fleet.credential("raw-0")
    client = RawMQTT(fleet.node_ports[1])
    assert client.connect("raw-0", password)[1][1] == 0
    wait_for(lambda: route_node(fleet, "raw-0"), what="raw-0 online")
    status, body = fleet.api("POST", "/v1/push", {"to": ["raw-0"], "payload": "fire and forget", "qos": 0})
    publish = parse_publish(*client.read())
    assert publish == {"topic": "push/raw-0", "qos": 0, "dup": False, "retain": False, "id": None, "payload": b"fire and forget",
                       "props": b""}, publish
    wait_for(lambda: fleet.api("GET", f"/v1/messages/{body['id']}")[1]["delivered"] == 1, what="delivered")
    assert fleet.api("GET", "/v1/terminals/raw-0")[1]["queued"] == 0
    client.close()


def test_online_only_push_reaches_online_terminals_and_drops_for_offline(fleet):
    password = fleet.credential("live-1")
    client = RawMQTT(fleet.lb_mqtt)
    assert client.connect("live-1", password)[1][1] == 0
    wait_for(lambda: route_node(fleet, "live-1"), what="live-1 online")
    status, body = fleet.api("POST", "/v1/push", {"to": ["live-1", "never-seen"], "payload": "now or never", "ttl": 0})
    assert status == 202 and body["targets"] == 2, body
    publish = parse_publish(*client.read())
    assert publish["topic"] == "push/live-1" and publish["payload"] == b"now or never", publish
    client.puback(publish["id"])
    final = wait_for(lambda: (lambda b: b if b["acknowledged"] == 1 and b["dropped"] == 1 else None)(fleet.api("GET", f"/v1/messages/{body['id']}")[1]),
                     what="acknowledged + dropped")
    assert final["terminals"] == {"live-1": "acknowledged", "never-seen": "dropped"}, final
    assert fleet.api("GET", "/v1/terminals/never-seen")[1]["queued"] == 0
    client.close()


def test_qos0_subscription_caps_the_delivery_qos(fleet):
    password = fleet.credential("raw-sub0")
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("raw-sub0", password)[1][1] == 0
    assert client.subscribe("push/raw-sub0", 0) == (0x90, b"\x00\x01\x00")  # granted QoS 0
    wait_for(lambda: route_node(fleet, "raw-sub0"), what="raw-sub0 online")
    status, body = fleet.api("POST", "/v1/push", {"to": ["raw-sub0"], "payload": "capped", "qos": 1})
    publish = parse_publish(*client.read())
    assert publish["qos"] == 0 and publish["payload"] == b"capped", publish
    wait_for(lambda: fleet.api("GET", "/v1/terminals/raw-sub0")[1]["queued"] == 0, what="QoS 0 delivery removed the entry")
    client.close()


def test_batch_push_accepts_each_message_on_its_own(fleet):
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("batch-1", fleet.credential("batch-1"))[1][1] == 0
    wait_for(lambda: route_node(fleet, "batch-1"), what="batch-1 online")
    status, body = fleet.api("POST", "/v1/push/batch", {"messages": [
        {"to": ["batch-1"], "payload": "one"},
        {"to": ["batch-2"], "payload": "two", "ttl": 600},
        {"to": ["batch-1"], "payload": "bad", "qos": 5},
        {"to": ["batch-1"]},
    ]})
    assert status == 202, body
    results = body["results"]
    assert [("id" in r, r.get("targets")) for r in results[:2]] == [(True, 1), (True, 1)], results
    assert results[2]["error"]["code"] == "invalid_request" and "qos" in results[2]["error"]["message"], results
    assert results[3]["error"]["code"] == "invalid_request", results
    publish = parse_publish(*client.read())
    assert publish["payload"] == b"one", publish
    assert fleet.api("GET", "/v1/terminals/batch-2")[1]["queued"] == 1
    status, body = fleet.api("POST", "/v1/push/batch", {"messages": []})
    assert status == 400 and body["error"]["code"] == "invalid_request", body
    client.close()


def test_qos2_push_goes_through_pubrec_pubrel_pubcomp(fleet):
    client = RawMQTT(fleet.node_ports[1])
    assert client.connect("q2-1", fleet.credential("q2-1"))[1][1] == 0
    assert client.subscribe("push/q2-1", 2) == (0x90, b"\x00\x01\x02")  # granted QoS 2
    wait_for(lambda: route_node(fleet, "q2-1"), what="q2-1 online")
    status, body = fleet.api("POST", "/v1/push", {"to": ["q2-1"], "payload": "exactly once", "qos": 2})
    publish = parse_publish(*client.read())
    assert publish["qos"] == 2 and publish["payload"] == b"exactly once", publish
    client.sock.sendall(bytes([0x50, 2]) + publish["id"].to_bytes(2, "big"))  # PUBREC
    assert client.read() == (0x62, publish["id"].to_bytes(2, "big"))  # PUBREL
    client.sock.sendall(bytes([0x70, 2]) + publish["id"].to_bytes(2, "big"))  # PUBCOMP
    wait_for(lambda: fleet.api("GET", f"/v1/messages/{body['id']}")[1]["acknowledged"] == 1, what="acknowledged at PUBREC")
    assert fleet.api("GET", "/v1/terminals/q2-1")[1]["queued"] == 0
    # A QoS 1 push to the same terminal still flows after the packet id was released.
    fleet.api("POST", "/v1/push", {"to": ["q2-1"], "payload": "then once more", "qos": 1})
    follow = parse_publish(*client.read())
    assert follow["qos"] == 1 and follow["payload"] == b"then once more", follow
    client.close()


def test_keepalive_is_enforced_at_one_and_a_half_times(fleet):
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("sleepy", fleet.credential("sleepy"), keepalive=2)[1][1] == 0
    started = time.time()
    assert client.read() is None  # silent client: the node closes the connection
    elapsed = time.time() - started
    assert 2.9 <= elapsed <= 5.5, elapsed
    client.close()


def test_connack_codes_for_bad_protocol_level_and_client_id(fleet):
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("whatever", level=9) == (0x20, b"\x00\x01")  # unacceptable protocol version
    assert client.read() is None
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("", password="x", clean=False) == (0x20, b"\x00\x02")  # identifier rejected
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("no/slash", password="x") == (0x20, b"\x00\x02")
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("nocred") == (0x20, b"\x00\x04")  # no credential: bad user name or password


def test_health_readiness_and_metrics(fleet):
    status, body = fleet.api("GET", "/readyz")
    assert status == 200 and body["status"] == "ready", body
    # Earlier scenarios pushed messages and connected terminals: both kinds of node count them.
    with urllib.request.urlopen(f"http://127.0.0.1:{fleet.lb_http}/metrics", timeout=5) as response:
        text = response.read().decode()
        assert response.status == 200
        assert 'pushfleet_control_pushes_total{kind="unicast",qos="1"}' in text, text
    for port in fleet.admin_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
            assert "pushfleet_node_connects_total" in text, text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200


def test_api_key_guards_every_path_however_it_is_spelled(fleet):
    """A control node with --api-key: no /v1 call without it, double slashes included."""
    from fleet import SECRET, free_port, wait_port
    port = free_port()
    keys_file = os.path.join(fleet.dir, "api-keys")
    with open(keys_file, "w") as f:
        f.write("# key scopes [requests per second]\npusher push\nslow read 2\n")
    fleet.start("control-key", [fleet.binary, "control", "--redis", f"redis://127.0.0.1:{fleet.redis_port}", "--listen",
                                f"127.0.0.1:{port}", "--api-key", "k-e2e", "--api-keys-file", keys_file, "--consumer", "ckey"],
                env={"PUSHFLEET_SECRET": SECRET})
    try:
        wait_port(port)
        body = json.dumps({"terminal": "keyed-1"})

        def call(method, path, key=None, payload=None, headers_out=None):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"Content-Type": "application/json"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            connection.request(method, path, (payload or body) if method == "POST" else None, headers)
            response = connection.getresponse()
            answer = response.read()
            if headers_out is not None:
                headers_out.update(response.getheaders())
            connection.close()
            return response.status, answer

        for path in ["/v1/credentials", "//v1/credentials", "/v1//credentials", "///v1/credentials"]:
            status, answer = call("POST", path)
            assert status == 401 and b"unauthorized" in answer, (path, status, answer)
            assert call("POST", path, key="wrong")[0] == 401, path
        assert call("POST", "/v1/credentials", key="k-e2e")[0] == 201
        assert call("DELETE", "//v1/credentials/keyed-1")[0] == 401
        assert call("GET", "/healthz")[0] == 200 and call("GET", "/metrics")[0] == 200
        assert call("GET", "/openapi.json")[0] == 200
        # A path the API has with a method it lacks: 405 naming the methods (after the key check).
        assert call("PUT", "/v1/push")[0] == 401
        allow = {}
        status, answer = call("PUT", "/v1/push", key="k-e2e", headers_out=allow)
        assert status == 405 and b"method_not_allowed" in answer and allow.get("Allow") == "POST", (status, answer, allow)
        # Path parameters are percent-decoded, as encodeURIComponent writes them.
        assert call("POST", "/v1/credentials", key="k-e2e", payload=json.dumps({"terminal": "keyed:1"}))[0] == 201
        assert call("DELETE", "/v1/credentials/keyed%3A1", key="k-e2e")[0] == 204
        assert call("DELETE", "/v1/credentials/keyed%2F1", key="k-e2e")[0] == 400
        # Scoped keys: 403 without the scope, 429 with Retry-After beyond the key's rate.
        push = json.dumps({"to": ["keyed-2"], "payload": "x"})
        assert call("POST", "//v1/push", key="pusher", payload=push)[0] == 202
        status, answer = call("POST", "/v1/credentials", key="pusher")
        assert status == 403 and b"credentials" in answer, (status, answer)
        assert call("GET", "/v1/nodes", key="pusher")[0] == 403
        statuses, headers = [], {}
        for _ in range(4):
            statuses.append(call("GET", "/v1/nodes", key="slow", headers_out=headers)[0])
        assert statuses[:2] == [200, 200] and 429 in statuses, statuses
        assert headers.get("Retry-After") == "1", headers
    finally:
        fleet.kill("control-key", signal.SIGTERM)


def test_safe_by_default_short_secrets_and_an_open_api_on_a_public_address_are_refused(fleet):
    from fleet import SECRET, free_port
    redis = f"redis://127.0.0.1:{fleet.redis_port}"
    short = subprocess.run([fleet.binary, "node", "--redis", redis, "--secret", "fifteen-bytes!!", "--mqtt", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=20)
    assert short.returncode != 0 and "16 bytes or more" in short.stderr, short
    public = subprocess.run([fleet.binary, "control", "--redis", redis, "--secret", SECRET, "--listen", f"0.0.0.0:{free_port()}"],
                            capture_output=True, text=True, timeout=20)
    assert public.returncode != 0 and "--api-key" in public.stderr, public
    port = free_port()
    fleet.start("control-open", [fleet.binary, "control", "--redis", redis, "--secret", SECRET, "--listen", f"0.0.0.0:{port}",
                                 "--insecure", "--consumer", "copen"])
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, what="--insecure control node serving")
    finally:
        fleet.kill("control-open", signal.SIGTERM)


def test_json_and_logfmt_logs_parse_and_hold_no_secret(fleet):
    """A control node logging JSON and a push node logging logfmt, both at trace level, through
    credentials issued, good and bad connects, pushes delivered, and a Redis AUTH refused:
    every line parses, carries its level and message, and no line holds the credential
    secret, the API key, the Redis password or a terminal's password."""
    from fleet import SECRET, free_port, wait_port
    api_key = "log-test-api-key-0123456789abcdef"
    redis_password = "hunter2-redis-password-in-url"
    control_port, mqtt_port = free_port(), free_port()
    redis = f"redis://127.0.0.1:{fleet.redis_port}"
    fleet.start("control-log", [fleet.binary, "control", "--redis", redis, "--listen", f"127.0.0.1:{control_port}", "--api-key",
                                api_key, "--consumer", "clog", "--log-format", "json", "--log-level", "trace"],
                env={"PUSHFLEET_SECRET": SECRET})
    fleet.start("node-log", [fleet.binary, "node", "--redis", redis, "--mqtt", f"127.0.0.1:{mqtt_port}", "--node-id", "nlog",
                             "--secret", SECRET, "--log-level", "trace"], env={"PUSHFLEET_LOG_FORMAT": "logfmt"})
    # A Redis URL with a password this Redis does not have: its AUTH is refused and logged.
    fleet.start("node-auth", [fleet.binary, "node", "--redis", f"redis://:{redis_password}@127.0.0.1:{fleet.redis_port}",
                              "--mqtt", f"127.0.0.1:{free_port()}", "--node-id", "nauth", "--secret", SECRET, "--log-format",
                              "logfmt", "--log-level", "trace"])
    passwords = []
    try:
        wait_port(control_port)
        wait_port(mqtt_port)
        for terminal in ["log-1", "log-2"]:
            request = urllib.request.Request(f"http://127.0.0.1:{control_port}/v1/credentials",
                                             data=json.dumps({"terminal": terminal}).encode(), method="POST",
                                             headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                passwords.append(json.loads(response.read())["password"])
        good = RawMQTT(mqtt_port)
        assert good.connect("log-1", passwords[0]) == (0x20, b"\x00\x00")
        bad = RawMQTT(mqtt_port)
        assert bad.connect("log-2", passwords[0])[1][1] != 0  # another terminal's password
        bad.close()
        request = urllib.request.Request(f"http://127.0.0.1:{control_port}/v1/push", method="POST",
                                         data=json.dumps({"to": ["log-1"], "payload": "logged?"}).encode(),
                                         headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        first, body = good.read()
        assert first >> 4 == 3 and body.endswith(b"logged?"), body
        good.close()
        time.sleep(1.5)
    finally:
        for name in ["control-log", "node-log", "node-auth"]:
            fleet.kill(name, signal.SIGTERM)
    secrets = [SECRET, api_key, redis_password, *passwords]
    counts = {}
    for name, parse in [("control-log", json.loads), ("node-log", parse_logfmt), ("node-auth", parse_logfmt)]:
        with open(os.path.join(fleet.dir, name + ".log")) as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        counts[name] = len(lines)
        for line in lines:
            for secret in secrets:
                assert secret not in line, f"{name} logged a secret: {line}"
            fields = parse(line)
            assert fields.get("level") and "msg" in fields and fields.get("ts"), (name, line)
    assert counts["control-log"] > 5 and counts["node-log"] > 5, counts
    with open(os.path.join(fleet.dir, "node-auth.log")) as f:
        assert "AUTH" in f.read(), "the refused AUTH was not logged"


def test_stats_count_what_waits_in_the_lists_one_past_the_cap_and_after_a_drain(fleet):
    """GET /v1/stats `queued` (the nodes' ledgers, written with their heartbeats) follows the
    lists: pushes stored, one list pushed one past its cap, a terminal draining its list."""
    def queued():
        return fleet.api("GET", "/v1/stats")[1]["queued"]

    def settled():
        first = queued()
        time.sleep(3.5)  # a push node's heartbeat interval, plus a margin
        return (first,) if queued() == first else None
    base = wait_for(settled, timeout=30, what="a steady queued figure")[0]
    batch = [{"to": ["stats-a", "stats-b"], "payload": f"m{i}", "qos": 1} for i in range(100)]
    assert fleet.api("POST", "/v1/push/batch", {"messages": batch})[0] == 202
    wait_for(lambda: queued() == base + 200, what=f"queued {base} + 200")
    # One past the cap (1000 by default): the oldest is pushed out and counted out.
    batch = [{"to": ["stats-c"], "payload": f"c{i}", "qos": 1} for i in range(1000)]
    assert fleet.api("POST", "/v1/push/batch", {"messages": batch})[0] == 202
    assert fleet.api("POST", "/v1/push", {"to": ["stats-c"], "payload": "one more", "qos": 1})[0] == 202
    assert fleet.redis_cli("LLEN", "pushfleet:{t:stats-c}:queue") == "1000"
    wait_for(lambda: queued() == base + 1200, what=f"queued {base} + 1200 (not 1201)")
    stats = fleet.api("GET", "/v1/stats")[1]
    assert stats["pushes"] >= 1101 and stats["targets"] >= 1201, stats
    # stats-a connects and acknowledges its 100: the push node counts them out.
    received = []
    client = mqtt5_client(fleet, "stats-a", fleet.node_ports[1], on_message=lambda m: received.append(m.payload))
    try:
        wait_for(lambda: len(received) == 100, what="stats-a's 100 messages")
        wait_for(lambda: fleet.redis_cli("LLEN", "pushfleet:{t:stats-a}:queue") == "0", what="stats-a's list empty")
        wait_for(lambda: queued() == base + 1100, what=f"queued {base} + 1100 after the drain")
        delivered = fleet.api("GET", "/v1/stats")[1]
        assert delivered["delivered"] >= 100 and delivered["acknowledged"] >= 100, delivered
    finally:
        client.disconnect()
        client.loop_stop()


def scrape(port):
    """A /metrics page as {sample name with labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_inflight_deliveries_by_path_redis_errors_and_event_loop_lag(fleet):
    """The operators' metrics move as the fleet works: QoS 1 messages held by a terminal that
    does not acknowledge are in flight until it leaves, deliveries are counted by QoS and
    path, pushes by kind and QoS, a Redis error reply is counted, and every node measures its
    Redis requests and its event loops' lag."""
    admin = fleet.admin_ports[0]
    before = scrape(admin)
    control_before = scrape(fleet.control_port)
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("metrics-1", fleet.credential("metrics-1")) == (0x20, b"\x00\x00")
    try:
        for index in range(3):
            assert fleet.api("POST", "/v1/push", {"to": ["metrics-1"], "payload": f"held {index}", "qos": 1})[0] == 202
        for _ in range(3):
            first, body = client.read()
            assert first >> 4 == 3 and parse_publish(first, body)["qos"] == 1  # PUBLISH, not acknowledged
        wait_for(lambda: scrape(admin)["pushfleet_node_inflight_messages"] == before["pushfleet_node_inflight_messages"] + 3,
                 what="3 messages in flight")
    finally:
        client.close()
    wait_for(lambda: scrape(admin)["pushfleet_node_inflight_messages"] == before["pushfleet_node_inflight_messages"],
             what="nothing in flight once the terminal left")
    after = scrape(admin)
    stored = 'pushfleet_node_messages_delivered_total{qos="1",path="stored"}'
    assert after[stored] >= before[stored] + 3, (before[stored], after[stored])
    wait_for(lambda: scrape(admin)["pushfleet_event_loop_lag_seconds_count"] > before["pushfleet_event_loop_lag_seconds_count"],
             what="an event loop lag measured (every 500 ms)")
    assert after["pushfleet_redis_request_duration_seconds_count"] > before["pushfleet_redis_request_duration_seconds_count"]
    # A key of the wrong type: the push is refused (500), and the control node counts Redis's error reply.
    fleet.redis_cli("SET", "pushfleet:{t:metrics-2}:queue", "not a list")
    assert fleet.api("POST", "/v1/push", {"to": ["metrics-2"], "payload": "x", "qos": 1})[0] == 500
    control = {}
    for port in fleet.control_ports:
        for name, value in scrape(port).items():
            control[name] = control.get(name, 0) + value
    reply_errors = 'pushfleet_redis_errors_total{kind="reply"}'
    assert control[reply_errors] >= control_before.get(reply_errors, 0) + 1, control
    pushes = 'pushfleet_control_pushes_total{kind="unicast",qos="1"}'
    assert control[pushes] >= control_before[pushes] + 3
    fleet.redis_cli("DEL", "pushfleet:{t:metrics-2}:queue")


def test_status_command_shows_the_fleet_on_one_screen(fleet):
    """`pushfleet status --once` through the balancer: the push nodes and their connections as
    /v1/nodes gives them, Redis ready, the fleet's pushes as /v1/stats gives them; and a clear
    failure, exit code 1, when the API cannot be reached."""
    from fleet import free_port
    client = RawMQTT(fleet.node_ports[0])
    assert client.connect("status-1", fleet.credential("status-1")) == (0x20, b"\x00\x00")
    try:
        assert fleet.api("POST", "/v1/push", {"to": ["status-1"], "payload": "seen"})[0] == 202
        wait_for(lambda: any(n["connections"] >= 1 for n in fleet.api("GET", "/v1/nodes")[1]["nodes"]), what="the connection counted")
        nodes = {n["id"]: n["connections"] for n in fleet.api("GET", "/v1/nodes")[1]["nodes"]}
        out = subprocess.run([fleet.binary, "status", "--once", "--api", f"http://127.0.0.1:{fleet.lb_http}"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out
        screen = out.stdout
        assert "Redis (through the control node): ok" in screen, screen
        stats = fleet.api("GET", "/v1/stats")[1]
        assert f"push nodes: {len(nodes)}   connections: {sum(nodes.values())}   queued: {stats['queued']}" in screen, (screen, stats)
        for node, connections in nodes.items():
            row = next(line for line in screen.splitlines() if line.split()[:1] == [node])
            assert row.split()[2] == str(connections), (row, connections)
        # Fleet-wide totals (every live control node's), whichever control node answered.
        wait_for(lambda: fleet.api("GET", "/v1/stats")[1]["pushes"] >= 1, what="the push in the control nodes' totals")
        out = subprocess.run([fleet.binary, "status", "--once", "--api", f"http://127.0.0.1:{fleet.lb_http}"], capture_output=True,
                             text=True, timeout=30)
        pushes = next(line for line in out.stdout.splitlines() if line.split()[:2] == ["pushes", "in"])
        assert int(pushes.split()[2]) == fleet.api("GET", "/v1/stats")[1]["pushes"] >= 1, out.stdout
    finally:
        client.close()
    dead = subprocess.run([fleet.binary, "status", "--once", "--api", f"http://127.0.0.1:{free_port()}"], capture_output=True,
                          text=True, timeout=30)
    assert dead.returncode == 1 and "cannot reach the control API" in dead.stdout, dead


def parse_logfmt(line):
    """The fields of a logfmt line (quoted values unescaped); fails on anything else."""
    fields, index = {}, 0
    while index < len(line):
        equals = line.index("=", index)
        key = line[index:equals]
        assert key and " " not in key, line
        index = equals + 1
        if index < len(line) and line[index] == '"':
            value, index = "", index + 1
            while line[index] != '"':
                if line[index] == "\\":
                    index += 1
                    value += {"n": "\n", '"': '"', "\\": "\\"}.get(line[index], line[index])
                else:
                    value += line[index]
                index += 1
            index += 1
        else:
            end = line.find(" ", index)
            end = len(line) if end < 0 else end
            value, index = line[index:end], end
        fields[key] = value
        assert index == len(line) or line[index] == " ", line
        index += 1
    return fields


def test_zz_sigterm_drains_a_push_node(fleet):
    """Last: it stops node 2."""
    events = {"reason": None}
    client = mqtt5_client(fleet, "drain-1", fleet.node_ports[1], on_disconnect=lambda rc: events.__setitem__("reason", rc))
    wait_for(lambda: route_node(fleet, "drain-1") == "n2", what="drain-1 on n2")
    fleet.procs["node2"].send_signal(signal.SIGTERM)
    wait_for(lambda: events["reason"] is not None, what="DISCONNECT from the draining node")
    client.loop_stop()
    assert str(events["reason"]) == "Server shutting down", events["reason"]
    assert fleet.procs["node2"].wait(timeout=10) == 0
    wait_for(lambda: not route_node(fleet, "drain-1"), what="route removed")
    assert [n["id"] for n in fleet.api("GET", "/v1/nodes")[1]["nodes"]] == ["n1"]
    # Pushes to the drained terminal wait for it.
    status, body = fleet.api("POST", "/v1/push", {"to": ["drain-1"], "payload": "later"})
    assert status == 202
    assert fleet.api("GET", "/v1/terminals/drain-1")[1]["queued"] == 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("-k", default="")
    args = parser.parse_args()
    for tool in ["redis-server", "redis-cli", "haproxy", "mosquitto_sub", "curl"]:
        if not shutil.which(tool):
            sys.exit(f"e2e: {tool} is not installed")
    tests = [(name, fn, "events" if "status_events" in name else "main") for name, fn in globals().items()
             if name.startswith("test_") and args.k in name]
    events = ["--status-events", "10000"]
    run_suite("e2e", tests, {"main": lambda: Fleet(args.bin),
                             "events": lambda: Fleet(args.bin, control_args=events, node_args=events)})


if __name__ == "__main__":
    main()
