#!/usr/bin/env python3
"""A status webhook receiver for measurements: answers every POST 204 and counts requests and
events, and how long after its state each event arrived; on SIGTERM or SIGINT prints
`requests N events M delay p50 X ms p99 Y ms max Z ms` and exits.

Usage: python3 scripts/webhook-sink.py PORT   (then --status-webhook http://127.0.0.1:PORT/)
"""
import json
import signal
import statistics
import time
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"requests": 0, "events": 0}
delays = []  # milliseconds from an event's state to its arrival
lock = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        events = json.loads(body)["events"]
        now = time.time() * 1000
        with lock:
            counts["requests"] += 1
            counts["events"] += len(events)
            delays.extend(now - event["at"] for event in events)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(*_):
        ordered = sorted(delays) or [0]
        print(f"requests {counts['requests']} events {counts['events']} delay p50 {statistics.median(ordered):.0f} ms "
              f"p99 {ordered[int(len(ordered) * 0.99)]:.0f} ms max {ordered[-1]:.0f} ms", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
