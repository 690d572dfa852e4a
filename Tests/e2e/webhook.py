#!/usr/bin/env python3
"""The status webhook end to end: real control and push nodes with --status-events and
--status-webhook, posting to a receiver in this process that checks every request's
signature, and can refuse (503) or stop answering on demand.

Usage: python3 Tests/e2e/webhook.py --bin .build/debug/pushfleet
"""
import argparse
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fleet import Fleet, free_port, mqtt5_client, run_suite, wait_for

WEBHOOK_SECRET = "webhook-secret-for-tests"


class Receiver:
    """An HTTP server taking webhook posts on 127.0.0.1. `hang` requests are answered
    nothing for 3 s, then `refuse` requests are answered 503 with Retry-After 1, before it
    takes any; every request's signature is checked (a bad
    one is recorded in `bad`, answered 401)."""

    def __init__(self, tls=None):
        """`tls`: (certificate, key) PEM files: the receiver takes HTTPS."""
        self.port = free_port()
        self.tls = tls
        self.lock = threading.Lock()
        self.events = []  # every event posted, repeats included, in arrival order
        self.bodies = []
        self.requests = 0
        self.refused = 0
        self.refuse = 0
        self.refuse_all = False
        self.hang = 0
        self.hung = 0
        self.slow = 0.0  # seconds each taken request waits before its answer
        self.in_flight = 0
        self.most_in_flight = 0
        self.bad = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    hang, receiver.hang = receiver.hang > 0, max(0, receiver.hang - 1)
                    receiver.hung += hang
                if hang:
                    # Longer than the control nodes' --status-webhook-timeout 2, then nothing.
                    time.sleep(3)
                    self.close_connection = True
                    return
                timestamp = self.headers.get("PushFleet-Timestamp", "")
                expected = "v1=" + hmac.new(WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                with receiver.lock:
                    receiver.requests += 1
                    if not hmac.compare_digest(expected, self.headers.get("PushFleet-Signature", "")) or \
                            abs(time.time() - int(timestamp or 0)) > 60 or self.headers.get("Content-Type") != "application/json":
                        receiver.bad.append(dict(self.headers))
                        status = 401
                    elif receiver.refuse_all or receiver.refuse > 0:
                        receiver.refuse = max(0, receiver.refuse - 1)
                        receiver.refused += 1
                        status = 503
                    else:
                        receiver.bodies.append(body)
                        receiver.events += json.loads(body)["events"]
                        status = 204
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                    slow = receiver.slow
                if slow:
                    time.sleep(slow)
                with receiver.lock:
                    receiver.in_flight -= 1
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if tls:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hooks/pushfleet"

    def posted(self):
        with self.lock:
            return list(self.events)


class WebhookFleet(Fleet):
    """A fleet whose control nodes post status events to their own Receiver."""

    def __init__(self, binary, controls, extra, tls=False):
        """`tls`: the receiver takes HTTPS with a certificate of a CA of its own, which the
        control nodes are given (--status-webhook-ca)."""
        self.ca = None
        if tls:
            import tempfile
            from fleet import make_certificates
            self.ca, certificate, key = make_certificates(tempfile.mkdtemp(prefix="pushfleet-webhook-tls-"))
            extra = [*extra, "--status-webhook-ca", self.ca]
        self.receiver = Receiver((certificate, key) if tls else None)
        events = ["--status-events", "100000"]
        super().__init__(binary, controls=controls, node_args=events,
                         control_args=[*events, "--status-webhook", self.receiver.url, "--claim-idle", "3",
                                       "--status-webhook-timeout", "2", "--status-webhook-batch", "2", *extra])

    def start(self, name, args, env=None):
        # The control nodes take the webhook secret from the environment, as an operator would give it.
        if name.startswith("control"):
            env = dict(env or {}, PUSHFLEET_STATUS_WEBHOOK_SECRET=WEBHOOK_SECRET)
        super().start(name, args, env)

    def stream_events(self):
        """Every event in the stream: {id: (message, terminal, state)}, an event's id being its
        entry's and its place in the entry, as the webhook gives it."""
        lines = self.redis_cli("XRANGE", "pushfleet:events", "-", "+").splitlines()
        events = {}
        for index in range(0, len(lines) - 2, 3):
            assert lines[index + 1] == "events", lines[index:index + 3]
            for place, event in enumerate(json.loads(lines[index + 2])):
                events[f"{lines[index]}-{place}"] = (event["message"], event["terminal"], event["state"])
        return events

    def metric(self, name, port=None):
        """The sum of a metric's samples whose name and labels start with `name`, on one
        control node."""
        port = port or self.control_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def push(fleet, body):
    status, receipt = fleet.api("POST", "/v1/push", body)
    assert status == 202, receipt
    return receipt["id"]


# ---------------------------------------------------------------- scenarios

def test_webhook_posts_events_that_match_the_message_status(fleet):
    """Every event in the stream is posted, signed, to the receiver; the last one posted for
    each copy is its state in GET /v1/messages/{id}: acknowledged, dropped, replaced,
    withdrawn; and the events of 1000 pushes (more than an entry and a request hold) all
    arrive."""
    received = []
    client = mqtt5_client(fleet, "wh-on", fleet.node_ports[0], on_message=lambda m: received.append(m.payload))
    try:
        wait_for(lambda: fleet.redis_cli("GET", "pushfleet:{t:wh-on}:route").startswith("n1"), what="wh-on online")
        ids = [push(fleet, {"to": ["wh-on", "wh-off"], "payload": "both", "ttl": 600}),
               push(fleet, {"to": ["wh-off"], "payload": "online only", "ttl": 0}),
               push(fleet, {"to": ["wh-off"], "payload": "old", "collapseKey": "score", "ttl": 600}),
               push(fleet, {"to": ["wh-off"], "payload": "new", "collapseKey": "score", "ttl": 600}),
               push(fleet, {"to": ["wh-off"], "payload": "cancel me", "ttl": 600})]
        assert fleet.api("DELETE", f"/v1/messages/{ids[4]}")[0] == 200
        status, body = fleet.api("POST", "/v1/push/batch",
                                 {"messages": [{"to": ["wh-on"], "payload": f"b{i}", "ttl": 600} for i in range(1000)]})
        assert status == 202, body
        ids += [result["id"] for result in body["results"]]
        wait_for(lambda: len(received) == 1001, timeout=60, what="wh-on's 1001 messages")
        wait_for(lambda: fleet.api("GET", f"/v1/messages/{ids[-1]}")[1]["acknowledged"] == 1, what="the last acknowledged")
    finally:
        client.disconnect()
        client.loop_stop()
    expected = {}
    for message_id in ids:
        for terminal, state in fleet.api("GET", f"/v1/messages/{message_id}")[1]["terminals"].items():
            if state != "queued":
                expected[(message_id, terminal)] = state
    assert set(expected.values()) == {"acknowledged", "dropped", "replaced", "withdrawn"}, expected

    def last_posted():
        last = {}
        for event in sorted(fleet.receiver.posted(), key=lambda e: (e["at"], e["id"])):
            last[(event["message"], event["terminal"])] = event["state"]
        return {key: state for key, state in last.items() if key[0] in ids}
    wait_for(lambda: last_posted() == expected, timeout=20, what="posted events matching the statuses")
    # Everything posted is in the stream as it was recorded, and everything in the stream was posted.
    # (Posters post side by side, so an earlier entry's events may still be on their way.)
    def posted():
        return {event["id"]: (event["message"], event["terminal"], event["state"]) for event in fleet.receiver.posted()}
    wait_for(lambda: posted() == fleet.stream_events(), what="every event in the stream posted, and nothing else")
    stream = fleet.stream_events()
    # An entry per status write, of at most 100 events.
    per_entry = {}
    for event_id in stream:
        entry = event_id.rsplit("-", 1)[0]
        per_entry[entry] = per_entry.get(entry, 0) + 1
    assert max(per_entry.values()) <= 100 and len(per_entry) < len(stream) / 5, (len(per_entry), len(stream))
    assert not fleet.receiver.bad, fleet.receiver.bad
    # Each body is what the OpenAPI description's statusEvents webhook says.
    import jsonschema
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "Sources", "ControlNode", "Resources", "openapi.json")) as f:
        description = json.load(f)
    schema = {"$ref": "#/components/schemas/StatusEventBatch", "components": description["components"]}
    for body in fleet.receiver.bodies:
        jsonschema.validate(json.loads(body), schema)
    assert sum(fleet.metric('pushfleet_webhook_events_total{result="posted"}', port) for port in fleet.control_ports) >= len(stream)
    # 1000 acknowledged pushes, in several requests of at most 2 entries (--status-webhook-batch
    # 2) of at most 100 events each (a push node's tick with more than 100 states writes
    # several entries).
    assert fleet.receiver.requests >= 3, fleet.receiver.requests
    assert max(len(json.loads(body)["events"]) for body in fleet.receiver.bodies) <= 200


def test_webhook_retries_a_receiver_that_refuses_or_hangs(fleet):
    """The receiver does not answer its next request within the timeout, then answers 503
    (Retry-After 1) to the next 3: the event is posted again until taken, once."""
    fleet.receiver.hang = 1
    fleet.receiver.refuse = 3
    refused_before = fleet.metric('pushfleet_webhook_requests_total{result="refused"}') + \
        (fleet.metric('pushfleet_webhook_requests_total{result="refused"}', fleet.control_ports[1]) if len(fleet.control_ports) > 1 else 0)
    message = push(fleet, {"to": ["wh-retry"], "payload": "x", "ttl": 0})
    wait_for(lambda: any(e["message"] == message for e in fleet.receiver.posted()), timeout=20, what="the dropped event posted")
    assert fleet.receiver.refused >= 3 and fleet.receiver.refuse == 0 and fleet.receiver.hung == 1
    refused = sum(fleet.metric('pushfleet_webhook_requests_total{result="refused"}', port) for port in fleet.control_ports)
    assert refused - refused_before >= 3, (refused, refused_before)
    assert sum(fleet.metric('pushfleet_webhook_requests_total{result="failed"}', port) for port in fleet.control_ports) >= 1
    assert [e["state"] for e in fleet.receiver.posted() if e["message"] == message] == ["dropped"]


def test_webhook_posts_several_requests_at_once_to_a_slow_receiver(fleet):
    """A receiver taking 0.3 s per request: each control node's 4 posters
    (--status-webhook-concurrency, default 4) have requests in flight together, and every
    event arrives."""
    fleet.receiver.slow = 0.3
    fleet.receiver.most_in_flight = 0
    try:
        # 40 pushes, each its own status write: 40 entries, 2 a request.
        ids = [push(fleet, {"to": [f"wh-s{i}"], "payload": "x", "ttl": 0}) for i in range(40)]
        wait_for(lambda: set(ids) <= {e["message"] for e in fleet.receiver.posted()}, timeout=30, what="the 40 pushes' events")
    finally:
        fleet.receiver.slow = 0.0
    assert fleet.receiver.most_in_flight >= 3, fleet.receiver.most_in_flight


def test_webhook_events_of_a_control_node_killed_while_posting_are_posted_by_another(fleet):
    """The receiver refuses everything; pushes make events; a control node holding a batch
    it could not post is SIGKILLed (each control node holds the batch it read, retrying it,
    and reads no more meanwhile). Once the receiver takes posts again, the other control
    node claims the dead one's events (after --claim-idle 3) and posts them: every event in
    the stream reaches the receiver."""
    fleet.receiver.refuse_all = True
    ids = [push(fleet, {"to": [f"wh-k{i}"], "payload": "x", "ttl": 0}) for i in range(20)]

    def holders():
        # XPENDING summary: count, smallest, greatest, then each consumer and its count.
        lines = fleet.redis_cli("XPENDING", "pushfleet:events", "webhook").splitlines()
        return {lines[i]: int(lines[i + 1]) for i in range(3, len(lines) - 1, 2)}
    wait_for(lambda: holders() and fleet.receiver.refused >= 1, timeout=20,
             what="events read and refused")
    # Posters are named <consumer>-webhook-<n>; the fleet's consumers are c1, c2.
    victim = sorted(holders())[0].split("-")[0]
    fleet.kill("control" + victim[1:])
    fleet.receiver.refuse_all = False
    wait_for(lambda: set(ids) <= {e["message"] for e in fleet.receiver.posted()}, timeout=30,
             what=f"the events {victim} held posted by the other control node")
    wait_for(lambda: fleet.redis_cli("XPENDING", "pushfleet:events", "webhook").splitlines()[0] == "0", what="nothing pending")
    stream = fleet.stream_events()
    assert {e["id"] for e in fleet.receiver.posted()} == set(stream)
    fleet.restart("control" + victim[1:])


def test_webhook_drops_events_past_their_maximum_age(fleet):
    """With --status-webhook-max-age 4, events the receiver refuses for longer are dropped
    (counted), and the events after them are posted once it takes posts again."""
    fleet.receiver.refuse_all = True
    old = push(fleet, {"to": ["wh-old"], "payload": "x", "ttl": 0})
    wait_for(lambda: fleet.metric('pushfleet_webhook_events_total{result="dropped"}') >= 1, timeout=20, what="the old event dropped")
    fleet.receiver.refuse_all = False
    new = push(fleet, {"to": ["wh-new"], "payload": "x", "ttl": 0})
    wait_for(lambda: any(e["message"] == new for e in fleet.receiver.posted()), timeout=20, what="the new event posted")
    assert not any(e["message"] == old for e in fleet.receiver.posted())
    # Acknowledged once the receiver answered (the receiver records an event before answering).
    wait_for(lambda: fleet.redis_cli("XPENDING", "pushfleet:events", "webhook").splitlines()[0] == "0", what="nothing pending")


def test_webhook_goes_on_after_redis_restarts(fleet):
    """Redis is killed (SIGKILL) while the receiver refuses, so that a control node holds a
    batch when it goes, and started again from its append-only file: events recorded before
    and after the restart are all posted (some twice at most: the acknowledgements of the last
    second before the kill may not be on disk). One Redis: the cluster's faults are the fault
    suite's."""
    if fleet.cluster:
        print("  (skipped on a cluster)")
        return
    import signal
    fleet.receiver.refuse_all = True
    before = push(fleet, {"to": ["wh-r1"], "payload": "x", "ttl": 0})
    wait_for(lambda: fleet.receiver.refused >= 1, timeout=20, what="a batch held")
    time.sleep(1.2)  # the event's entry on disk (appendfsync everysec)
    fleet.kill("redis", signal.SIGKILL)
    fleet.start_redis()
    fleet.receiver.refuse_all = False

    def pushed():
        status, receipt = fleet.api("POST", "/v1/push", {"to": ["wh-r2"], "payload": "x", "ttl": 0})
        return receipt["id"] if status == 202 else None
    after = wait_for(pushed, timeout=20, what="a push accepted after the restart")
    wait_for(lambda: {before, after} <= {e["message"] for e in fleet.receiver.posted()}, timeout=30,
             what="the events from before and after the restart posted")
    wait_for(lambda: fleet.redis_cli("XPENDING", "pushfleet:events", "webhook").splitlines()[0] == "0", what="nothing pending")
    assert all(fleet.alive().values()), fleet.alive()


def test_webhook_posts_over_https_trusting_the_ca_it_is_given(fleet):
    """An https:// receiver whose certificate a private CA signed: the control nodes, given the
    CA (--status-webhook-ca), post to it; a control node without it refuses the certificate
    (its requests fail, counted, and nothing reaches the receiver from it)."""
    message = push(fleet, {"to": ["wh-tls"], "payload": "x", "ttl": 0})
    wait_for(lambda: any(e["message"] == message for e in fleet.receiver.posted()), timeout=20, what="the event over https")
    from fleet import SECRET
    port = free_port()
    fleet.start("control-noca", [fleet.binary, "control", "--redis", f"redis://127.0.0.1:{fleet.redis_port}", "--listen",
                                 f"127.0.0.1:{port}", "--secret", SECRET, "--consumer", "cnoca", "--key-prefix", "noca:",
                                 "--status-events", "100", "--status-webhook", fleet.receiver.url])
    from fleet import wait_port
    wait_port(port)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/push", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"to": ["wh-noca"], "payload": "x", "ttl": 0}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        unverified = json.loads(response.read())["id"]
    wait_for(lambda: fleet.metric('pushfleet_webhook_requests_total{result="failed"}', port) >= 1, timeout=20,
             what="the control node without the CA failing its requests")
    assert not any(e["message"] == unverified for e in fleet.receiver.posted())
    with open(os.path.join(fleet.dir, "control-noca.log")) as f:
        log = f.read()
    assert "status webhook unreachable" in log and "CERTIFICATE_VERIFY_FAILED" in log, log[-2000:]
    fleet.kill("control-noca")
    fleet.procs.pop("control-noca")


def test_webhook_settings_are_checked_at_start(fleet):
    """A control node refuses to start with a webhook it could not run as asked: no status
    events, a URL that is not http(s), a CA file without a certificate, a batch one past 100
    entries, 65 posters, a timeout not under
    --claim-idle."""
    from fleet import SECRET
    redis = f"redis://127.0.0.1:{fleet.redis_port}"

    def start(*args):
        out = subprocess.run([fleet.binary, "control", "--redis", redis, "--secret", SECRET, "--listen", f"127.0.0.1:{free_port()}",
                              "--status-webhook", *args], capture_output=True, text=True, timeout=20)
        assert out.returncode != 0, out
        return out.stderr
    assert "--status-events" in start(fleet.receiver.url)
    assert "http:// or https://" in start("ftp://127.0.0.1/x", "--status-events", "10")
    assert "--status-webhook-batch" in start(fleet.receiver.url, "--status-events", "10", "--status-webhook-batch", "101")
    assert "--status-webhook-ca" in start(fleet.receiver.url, "--status-events", "10", "--status-webhook-ca", "/nonexistent.pem")
    assert "--status-webhook-concurrency" in start(fleet.receiver.url, "--status-events", "10", "--status-webhook-concurrency", "65")
    # 100 entries and 64 posters are taken: the next check is the one that fails.
    assert "--claim-idle" in start(fleet.receiver.url, "--status-events", "10", "--status-webhook-batch", "100",
                                   "--status-webhook-concurrency", "64", "--status-webhook-timeout", "30")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("-k", default="")
    args = parser.parse_args()
    def fleet_of(name):
        return "short" if "maximum_age" in name else "tls" if "https" in name else "main"
    tests = [(name, fn, fleet_of(name)) for name, fn in globals().items() if name.startswith("test_") and args.k in name]
    run_suite("webhook", tests, {"main": lambda: WebhookFleet(args.bin, 2, []),
                                 "short": lambda: WebhookFleet(args.bin, 1, ["--status-webhook-max-age", "4"]),
                                 "tls": lambda: WebhookFleet(args.bin, 1, [], tls=True)})


if __name__ == "__main__":
    main()
