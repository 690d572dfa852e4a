#!/usr/bin/env python3
"""The admin page (/ui) in headless Chromium against a running fleet: two push nodes, a control
node with an API key, a terminal connected over MQTT (paho). The page is given the key; the
test checks the figures it shows against the API (push nodes, terminals online, each node's
row), looks up the terminal and what waits in an offline terminal's list, cancels a push from
the page, sends a test push from the form, sees the terminal receive it, reads its status on
the page, and writes a screenshot (--screenshot, default pushfleet-admin-ui.png in the temporary directory). Needs Debian's chromium and
chromium-driver, and selenium from PyPI."""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet import SECRET, Fleet, free_port, mqtt5_client, run_suite, wait_for, wait_port  # noqa: E402

KEY = "ui-test-key-0123456789"
ARGS = None


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1700"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def call(port, method, path, body=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_admin_page_shows_the_fleet_and_sends_a_push(fleet):
    from selenium.webdriver.common.by import By
    port = free_port()
    fleet.start("control-ui", [fleet.binary, "control", "--redis", f"redis://127.0.0.1:{fleet.redis_port}", "--listen",
                               f"127.0.0.1:{port}", "--api-key", KEY, "--consumer", "cui"], env={"PUSHFLEET_SECRET": SECRET})
    wait_port(port)
    received = []
    terminal = mqtt5_client(fleet, "ui-t1", fleet.node_ports[0], on_message=lambda m: received.append(m.payload))
    # An offline terminal with three messages waiting.
    for index in range(3):
        assert fleet.api("POST", "/v1/push", {"to": ["ui-away"], "payload": f"waiting {index}", "qos": 1})[0] == 202
    wait_for(lambda: call(port, "GET", "/v1/terminals/ui-t1")["online"], what="ui-t1 online")
    driver = browser()
    try:
        driver.get(f"http://127.0.0.1:{port}/ui")
        text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731
        # Without the key the page says so.
        wait_for(lambda: text("connection") == "key needed", what="the page asking for a key")
        driver.find_element(By.ID, "api-key").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        wait_for(lambda: text("connection") == "live", what="the page reading the API")
        assert driver.execute_script("return sessionStorage.getItem('pushfleet.apiKey')") == KEY
        assert driver.execute_script("return localStorage.length") == 0, "the key is kept in the tab's session only"

        # The overview against the API.
        nodes = call(port, "GET", "/v1/nodes")["nodes"]
        wait_for(lambda: text("nodes-count") == str(len(nodes)) == "2", what="push nodes on the page")
        online = sum(node["connections"] for node in call(port, "GET", "/v1/nodes")["nodes"])
        wait_for(lambda: text("terminals-online") == str(online), timeout=15, what=f"terminals online {online} on the page")
        rows = {row.get_attribute("data-node"): [td.text for td in row.find_elements(By.TAG_NAME, "td")]
                for row in driver.find_elements(By.CSS_SELECTOR, "#nodes-table tbody tr")}
        assert set(rows) == {node["id"] for node in nodes}, rows
        for node in nodes:
            assert rows[node["id"]][1] == node["mqtt"], (rows, node)
        assert text("redis") == "up"
        # Queued: ui-away's three (the ledger's count, written with the control node's heartbeat).
        wait_for(lambda: call(port, "GET", "/v1/stats")["queued"] == 3, what="the API's queued figure at 3")
        wait_for(lambda: text("queued") == "3", what="queued 3 on the page")

        # Terminal lookup: online on its node, and an offline terminal's list.
        driver.find_element(By.ID, "terminal-id").send_keys("ui-t1")
        driver.find_element(By.CSS_SELECTOR, "#terminal-form button").click()
        status = call(port, "GET", "/v1/terminals/ui-t1")
        wait_for(lambda: text("terminal-online") == "yes", what="ui-t1 shown online")
        assert text("terminal-node") == status["node"] == "n1", (text("terminal-node"), status)
        driver.find_element(By.ID, "terminal-id").clear()
        driver.find_element(By.ID, "terminal-id").send_keys("ui-away")
        driver.find_element(By.CSS_SELECTOR, "#terminal-form button").click()
        wait_for(lambda: text("terminal-online") == "no" and text("terminal-queued") == "3 messages", what="ui-away's list")
        queue = call(port, "GET", "/v1/terminals/ui-away/queue")
        shown = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in driver.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")]
        assert [row[0] for row in shown] == [entry["id"] for entry in queue["entries"]] and len(shown) == 3, (shown, queue)

        # A push waiting for ui-away, cancelled from the page: withdrawn.
        status, extra = fleet.api("POST", "/v1/push", {"to": ["ui-away"], "payload": "cancel me", "qos": 1})
        assert status == 202
        driver.find_element(By.ID, "message-id").send_keys(extra["id"])
        driver.find_element(By.CSS_SELECTOR, "#message-form button").click()
        wait_for(lambda: driver.find_element(By.ID, "message-cancel").is_displayed(), what="the cancel button")
        driver.find_element(By.ID, "message-cancel").click()
        wait_for(lambda: driver.find_elements(By.ID, "status-withdrawn") and text("status-withdrawn") == "1",
                 what="the push withdrawn on the page")
        assert text("message-cancelled").startswith("Cancelled: 1 withdrawn"), text("message-cancelled")
        assert call(port, "GET", "/v1/terminals/ui-away")["queued"] == 3
        driver.find_element(By.ID, "message-id").clear()

        # A test push from the form reaches the terminal; its status on the page.
        driver.find_element(By.ID, "push-target").send_keys("ui-t1")
        payload = driver.find_element(By.ID, "push-payload")
        payload.clear()
        payload.send_keys("pushed from the admin page")
        driver.find_element(By.CSS_SELECTOR, "#push-form button[type=submit]").click()
        wait_for(lambda: driver.find_element(By.ID, "push-result").get_attribute("data-id"), what="push accepted on the page")
        message_id = driver.find_element(By.ID, "push-result").get_attribute("data-id")
        wait_for(lambda: b"pushed from the admin page" in received, what="the terminal receiving the page's push")
        wait_for(lambda: call(port, "GET", f"/v1/messages/{message_id}")["acknowledged"] == 1, what="acknowledged")
        driver.find_element(By.ID, "push-status").click()
        wait_for(lambda: driver.find_elements(By.ID, "status-acknowledged") and text("status-acknowledged") == "1",
                 what="the message's status on the page")
        assert text("status-id") == message_id
        # Taken out of ui-t1's list once acknowledged (written with the push node's heartbeat).
        wait_for(lambda: call(port, "GET", "/v1/stats")["queued"] == 3, what="queued back to 3 after the acknowledgement")
        # The page's rates come from the nodes' totals: the push shows as a push in and a delivery out.
        wait_for(lambda: text("rate-in") not in ("…", "0.0") and text("rate-out") not in ("…", "0.0"), timeout=20,
                 what=f"rates on the page (in {text('rate-in')}, out {text('rate-out')})")
        screenshot = ARGS.screenshot or os.path.join(tempfile.gettempdir(), "pushfleet-admin-ui.png")
        driver.save_screenshot(screenshot)
        assert os.path.getsize(screenshot) > 10_000
        print(f"ui: screenshot {screenshot}")
    finally:
        driver.quit()
        terminal.loop_stop()


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--screenshot", help="where to write the screenshot (default: pushfleet-admin-ui.png in the temporary directory)")
    ARGS = parser.parse_args()
    for tool in ["chromium", "chromedriver"]:
        if not shutil.which(tool):
            sys.exit(f"ui: {tool} is not installed (apt-get install chromium chromium-driver)")
    tests = [(name, fn, "main") for name, fn in globals().items() if name.startswith("test_")]
    run_suite("ui", tests, {"main": lambda: Fleet(ARGS.bin, controls=1, nodes=2)})


if __name__ == "__main__":
    main()
