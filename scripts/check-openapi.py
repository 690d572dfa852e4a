#!/usr/bin/env python3
"""Checks the control API against its OpenAPI description (Sources/ControlNode/Resources/
openapi.json, served at /openapi.json): the served document is the repository's file and a
valid OpenAPI 3.1 document, and schemathesis, run against a live control node (with API keys,
on a fleet with a push node and Redis), finds no 5xx, no response that the description does not
allow (status, content type, headers, body schema), no call that answers without its key and
no invalid request accepted (schemathesis and openapi-spec-validator come from PyPI through
scripts/deps test). Bounded: --max-examples per operation and --max-time."""
import argparse
import json
import os
import subprocess
import sys
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DOCUMENT = os.path.join(ROOT, "Sources", "ControlNode", "Resources", "openapi.json")
sys.path.insert(0, os.path.join(ROOT, "Tests", "e2e"))
from fleet import Fleet, free_port, wait_port  # noqa: E402

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,ignored_auth,missing_required_header,unsupported_method")


def fail(message):
    print(f"openapi: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--max-examples", type=int, default=40, help="examples per operation and phase")
    parser.add_argument("--max-time", type=int, default=150, help="seconds for the schemathesis run")
    args = parser.parse_args()
    from openapi_spec_validator import validate

    with open(DOCUMENT) as f:
        document = json.load(f)
    validate(document)
    if document["openapi"] != "3.1.0":
        fail(f"openapi is {document['openapi']}")

    fleet = Fleet(args.bin, controls=1, nodes=1)
    try:
        fleet.start_all()
        # A control node with keys: an admin key for schemathesis, and a read-only one.
        port = free_port()
        keys = os.path.join(fleet.dir, "openapi-keys")
        with open(keys, "w") as f:
            f.write("k-admin admin\nk-read read\n")
        fleet.start("control-openapi", [fleet.binary, "control", "--redis", f"redis://127.0.0.1:{fleet.redis_port}",
                                        "--listen", f"127.0.0.1:{port}", "--api-keys-file", keys, "--consumer", "copenapi"],
                    env={"PUSHFLEET_SECRET": "0123456789abcdef0123456789abcdef"})
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as response:
            served = json.loads(response.read())
        if served != document:
            fail("/openapi.json is not the repository's document")
        # Something to find: a terminal with a credential and a session, and a message.
        fleet.credential("t-openapi")
        status, receipt = fleet.api("POST", "/v1/push", {"to": ["t-openapi"], "payload": "hello"})
        assert status == 202, (status, receipt)
        # One worker: with two threads, CPython 3.11's ast.parse (which hypothesis calls to
        # describe its strategies) once failed inside the tool with "AST constructor recursion
        # depth mismatch", a crash of the tool, not a finding about the API.
        command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json", "--checks", CHECKS, "--header", "Authorization: Bearer k-admin",
                   "--max-examples", str(args.max_examples), "--max-time", str(args.max_time), "--workers", "1",
                   "--phases", "examples,coverage,fuzzing", "--seed", "1", "--suppress-health-check", "all"]
        print("openapi:", " ".join(command), flush=True)
        result = subprocess.run(command, timeout=args.max_time + 300)
        if result.returncode != 0:
            fail(f"schemathesis failed (exit {result.returncode})")
        if not fleet.alive()["control-openapi"]:
            fail("the control node exited during the run")
    finally:
        fleet.stop_all()
    print("openapi: the document validates; schemathesis found no 5xx and no response outside the description")


if __name__ == "__main__":
    main()
