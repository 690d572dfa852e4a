#!/usr/bin/env python3
"""A status webhook receiver for measurements: answers every POST 204 and counts requests and
events; on SIGTERM or SIGINT prints `requests N events M` and exits.

Usage: python3 scripts/webhook-sink.py PORT   (then --status-webhook http://127.0.0.1:PORT/)
"""
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"requests": 0, "events": 0}
lock = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        events = len(json.loads(body)["events"])
        with lock:
            counts["requests"] += 1
            counts["events"] += events
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(*_):
        print(f"requests {counts['requests']} events {counts['events']}", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
