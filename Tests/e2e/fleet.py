"""Shared harness for the end-to-end and fault tests: a PushFleet on 127.0.0.1 as real
processes (redis-server, control nodes, push nodes, haproxy) and small MQTT helpers."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

SECRET = "e2e-secret-of-32-bytes-for-tests"


_next_port = 10_000 + (os.getpid() % 200) * 100


def free_port():
    """A loopback port no earlier call in this process gave out, free right now, and below the
    kernel's ephemeral range (32768 and up): a port bound with 0 comes from that range, where
    any outgoing connection (a node's to Redis) may take it as its source port before the
    server meant for it binds."""
    global _next_port
    for _ in range(22_000):
        port = _next_port
        _next_port = 10_000 if _next_port >= 31_999 else _next_port + 1
        if port in _reserved:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        # Kept from cluster_port() too: a port handed out may not be bound yet (a node's
        # extra listener picked before its fleet's Redis Cluster).
        _reserved.add(port)
        return port
    raise RuntimeError("no free loopback port below 32000")


_reserved = set()
_next_cluster_port = 10_000 + (os.getpid() % 120) * 100


def cluster_port():
    """A free port for a Redis Cluster node whose cluster bus port (the port + 10000) is free
    too, below the ephemeral range; both kept from later free_port() calls."""
    global _next_cluster_port
    for _ in range(12_000):
        port = _next_cluster_port
        _next_cluster_port = 10_000 if _next_cluster_port >= 22_000 else _next_cluster_port + 1
        if port in _reserved or port + 10_000 in _reserved:
            continue
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        _reserved.update([port, port + 10_000])
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Fleet:
    """redis-server (AOF), `controls` control nodes and `nodes` push nodes, haproxy in front of
    both (MQTT round robin, API round robin), all on 127.0.0.1. Processes keep their command
    lines so a test can kill and restart them."""

    def __init__(self, binary, controls=1, nodes=2, control_args=(), node_args=(), proxy_protocol=False, sentinel=False, cluster=None):
        """`proxy_protocol`: the push nodes run with `--proxy-protocol` and haproxy sends them a
        PROXY header (version 2 to the first node, version 1 to the others). `sentinel`: the
        master has a replica and a Sentinel watches it (down after 1 s); every node finds the
        master through the Sentinel. `cluster`: Redis is a Redis Cluster of 3 masters and 3
        replicas, and the nodes are given the first master's address (by default when the
        environment has PUSHFLEET_E2E_REDIS=cluster, so a whole suite runs on a cluster)."""
        self.proxy_protocol = proxy_protocol
        self.sentinel = sentinel
        if cluster is None:
            cluster = os.environ.get("PUSHFLEET_E2E_REDIS") == "cluster" and not sentinel
        self.cluster = cluster
        self.cluster_ports = [cluster_port() for _ in range(6)] if cluster else []
        self.replica_port = free_port() if sentinel else None
        self.sentinel_port = free_port() if sentinel else None
        self.binary = os.path.abspath(binary)
        self.dir = tempfile.mkdtemp(prefix="pushfleet-e2e-")
        self.procs = {}
        self.commands = {}
        self.redis_port = self.cluster_ports[0] if cluster else free_port()
        self.control_ports = [free_port() for _ in range(controls)]
        self.control_port = self.control_ports[0]
        self.node_ports = [free_port() for _ in range(nodes)]
        self.admin_ports = [free_port() for _ in range(nodes)]
        self.lb_mqtt = free_port()
        self.lb_http = free_port()
        self.control_args = list(control_args)
        # A list, or a function of the node's index returning one (per-node ports).
        self.node_args = node_args if callable(node_args) else list(node_args)

    def start(self, name, args, env=None):
        self.commands[name] = (args, env)
        full_env = dict(os.environ, **(env or {}))
        log = open(os.path.join(self.dir, name + ".log"), "a")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env)

    def restart(self, name):
        """Starts `name` again with the command line it had."""
        args, env = self.commands[name]
        self.start(name, args, env)

    def kill(self, name, sig=signal.SIGKILL, wait=True):
        self.procs[name].send_signal(sig)
        if wait:
            return self.procs[name].wait(timeout=30)

    def start_redis(self):
        if self.cluster:
            return self.start_cluster()
        self.start("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", self.dir,
                             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--lazyfree-lazy-expire", "yes",
                             "--logfile", os.path.join(self.dir, "redis-server.log")])
        # Ready by its own log, not just "something accepts on the port".
        wait_for(lambda: os.path.exists(os.path.join(self.dir, "redis-server.log")) and
                 open(os.path.join(self.dir, "redis-server.log")).read().count("Ready to accept connections") >
                 getattr(self, "_redis_starts", 0), what="redis-server ready")
        self._redis_starts = getattr(self, "_redis_starts", 0) + 1

    def cluster_server_name(self, index):
        return "redis" if index == 0 else f"redis{index + 1}"

    def start_cluster(self):
        """Six cluster-enabled servers (AOF), made into 3 masters and 3 replicas by
        `redis-cli --cluster create`; waits until every node says the cluster is ok."""
        for index, port in enumerate(self.cluster_ports):
            directory = os.path.join(self.dir, f"cluster-{port}")
            os.makedirs(directory, exist_ok=True)
            self.start(self.cluster_server_name(index),
                       ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
                        "--appendonly", "yes", "--appendfsync", "everysec", "--lazyfree-lazy-expire", "yes",
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                        "--logfile", os.path.join(directory, "redis-server.log")])
        for port in self.cluster_ports:
            wait_port(port)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.cluster_ports],
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True)

        def ready():
            replicas = 0
            for port in self.cluster_ports:
                info = subprocess.run(["redis-cli", "-p", str(port), "CLUSTER", "INFO"], capture_output=True, text=True).stdout
                if "cluster_state:ok" not in info:
                    return False
                replication = subprocess.run(["redis-cli", "-p", str(port), "INFO", "replication"], capture_output=True, text=True).stdout
                replicas += "master_link_status:up" in replication
            # Every replica in sync: one that never was would not be promoted.
            return replicas == 3 and len(self.cluster_masters()) == 3
        wait_for(ready, timeout=30, what="redis cluster ok, replicas in sync")

    def cluster_masters(self):
        """The ports of the cluster's masters serving slots, as the first live server sees them."""
        for port in self.cluster_ports:
            out = subprocess.run(["redis-cli", "-p", str(port), "CLUSTER", "NODES"], capture_output=True, text=True).stdout
            if out.strip():
                return sorted(int(line.split()[1].split(":")[1].split("@")[0]) for line in out.splitlines()
                              if "master" in line.split()[2] and "fail" not in line.split()[2] and len(line.split()) > 8)
        return []

    def start_sentinel(self):
        """A replica of the master, in sync, then a Sentinel that knows both."""
        replica_dir = os.path.join(self.dir, "replica")
        os.makedirs(replica_dir, exist_ok=True)
        self.start("replica", ["redis-server", "--port", str(self.replica_port), "--bind", "127.0.0.1", "--dir", replica_dir,
                               "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--lazyfree-lazy-expire", "yes",
                               "--replicaof", "127.0.0.1", str(self.redis_port)])
        wait_for(lambda: "state=online" in self.redis_cli("INFO", "replication"), timeout=20, what="replica in sync")
        config = os.path.join(self.dir, "sentinel.conf")
        with open(config, "w") as f:
            f.write(f"sentinel monitor mymaster 127.0.0.1 {self.redis_port} 1\n"
                    "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n")
        log = os.path.join(self.dir, "sentinel-server.log")
        self.start("sentinel", ["redis-server", config, "--sentinel", "--port", str(self.sentinel_port), "--bind", "127.0.0.1",
                                "--dir", self.dir, "--logfile", log])
        wait_for(lambda: os.path.exists(log) and "+slave" in open(log).read(), timeout=20, what="sentinel knows the replica")

    def sentinel_master(self):
        """The port of the master Sentinel names, and whether a failover is still under way."""
        out = subprocess.run(["redis-cli", "-p", str(self.sentinel_port), "SENTINEL", "master", "mymaster"],
                             capture_output=True, text=True).stdout.split("\n")
        fields = dict(zip(out[0::2], out[1::2]))
        return int(fields.get("port", 0)), "failover" in fields.get("flags", "")

    def start_all(self):
        self.start_redis()
        redis = f"redis://127.0.0.1:{self.redis_port}"
        sentinel_args = []
        if self.sentinel:
            self.start_sentinel()
            sentinel_args = ["--sentinel", f"127.0.0.1:{self.sentinel_port}", "--sentinel-master", "mymaster"]
        for index, port in enumerate(self.control_ports):
            # Flags and environment both: the control node takes its secret from PUSHFLEET_SECRET.
            self.start(f"control{index + 1}", [self.binary, "control", "--redis", redis, *sentinel_args, "--listen", f"127.0.0.1:{port}",
                                               "--endpoints", f"mqtt://127.0.0.1:{self.lb_mqtt}",
                                               "--consumer", f"c{index + 1}", *self.control_args],
                       env={"PUSHFLEET_SECRET": SECRET})
        for index, port in enumerate(self.node_ports):
            extra = self.node_args(index) if callable(self.node_args) else self.node_args
            if self.proxy_protocol:
                extra = [*extra, "--proxy-protocol"]
            self.start(f"node{index + 1}", [self.binary, "node", "--redis", redis, *sentinel_args, "--mqtt", f"127.0.0.1:{port}",
                                            "--node-id", f"n{index + 1}", "--secret", SECRET,
                                            "--admin", f"127.0.0.1:{self.admin_ports[index]}", *extra])

        def proxy(index):
            if not self.proxy_protocol:
                return ""
            return " send-proxy-v2 check-send-proxy" if index == 0 else " send-proxy check-send-proxy"
        nodes = "\n".join(f"    server n{i + 1} 127.0.0.1:{p} check inter 500ms fall 1 rise 1{proxy(i)}" for i, p in enumerate(self.node_ports))
        controls = "\n".join(f"    server c{i + 1} 127.0.0.1:{p} check inter 500ms fall 1 rise 1" for i, p in enumerate(self.control_ports))
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    option redispatch
    retries 3
frontend mqtt
    bind 127.0.0.1:{self.lb_mqtt}
    default_backend pushnodes
backend pushnodes
    balance roundrobin
{nodes}
frontend api
    bind 127.0.0.1:{self.lb_http}
    default_backend control
backend control
    balance roundrobin
{controls}
""")
        self.start("haproxy", ["haproxy", "-f", cfg, "-db"])
        for port in [*self.control_ports, *self.node_ports, self.lb_mqtt, self.lb_http]:
            wait_port(port)
        assert all(self.alive().values()), f"a process exited at start: {self.alive()}"
        # Ready: Redis commands and the subscriber (node channel, index channel) connected.
        for port in self.admin_ports:
            wait_for(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, what=f"push node admin {port} ready")
        wait_for(lambda: len(self.api("GET", "/v1/nodes")[1]["nodes"]) == len(self.node_ports), what="live push nodes")
        self.wait_balanced()

    def wait_balanced(self, timeout=15.0):
        """Connects a probe terminal through haproxy until every push node has answered, so
        haproxy's health checks have marked them all up."""
        password = self.credential("lb-probe")
        seen = set()
        deadline = time.time() + timeout
        while len(seen) < len(self.node_ports) and time.time() < deadline:
            probe = RawMQTT(self.lb_mqtt)
            if probe.connect("lb-probe", password) == (0x20, b"\x00\x00"):
                seen.add(self.redis_cli("GET", "pushfleet:{t:lb-probe}:route").split("|")[0])
            probe.close()
            time.sleep(0.1)
        assert len(seen) == len(self.node_ports), f"haproxy reached only {seen}"

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def alive(self):
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def api(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(f"http://127.0.0.1:{self.lb_http}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            text = error.read()
            return error.code, json.loads(text) if text else None

    def credential(self, terminal):
        status, body = self.api("POST", "/v1/credentials", {"terminal": terminal})
        assert status == 201, (status, body)
        return body["password"]

    def rss_kib(self, name):
        with open(f"/proc/{self.procs[name].pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def redis_lines(self, commands):
        """Runs `commands` (lists of arguments without spaces, each with a one-line reply)
        through one redis-cli, following a cluster's redirects; returns the replies' text."""
        port = self.live_redis_port()
        text = "".join(" ".join(command) + "\n" for command in commands)
        out = subprocess.run(["redis-cli", *(["-c"] if self.cluster else []), "-p", str(port)], input=text, text=True,
                             capture_output=True, check=True).stdout
        # redis-cli -c says where it followed a redirect on a line of its own.
        return [line for line in out.split("\n") if not line.startswith("-> Redirected")][:len(commands)]

    def live_redis_port(self):
        """The Redis port to ask: in a cluster, the first server still running."""
        if not self.cluster:
            return self.redis_port
        return next((p for index, p in enumerate(self.cluster_ports)
                     if self.procs.get(self.cluster_server_name(index)) and self.procs[self.cluster_server_name(index)].poll() is None),
                    self.redis_port)

    def redis_cli(self, *args):
        """redis-cli against the fleet's Redis (following MOVED in a cluster)."""
        port = self.live_redis_port()
        cluster = ["-c"] if self.cluster else []
        return subprocess.run(["redis-cli", *cluster, "-p", str(port), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_certificates(directory):
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost, signed by it.
    Returns (ca.pem, server.pem, server.key)."""
    def path(name):
        return os.path.join(directory, name)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", path("ca.key"), "-out", path("ca.pem"),
            "-days", "2", "-subj", "/CN=pushfleet test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", path("server.key"), "-out", path("server.csr"),
            "-subj", "/CN=127.0.0.1")
    with open(path("san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
            "-CAcreateserial", "-out", path("server.pem"), "-days", "2", "-extfile", path("san.ext"))
    return path("ca.pem"), path("server.pem"), path("server.key")


def mqtt5_client(fleet, terminal, port, on_disconnect=None, on_message=None):
    """A paho MQTT 5 client for `terminal`, with a fresh credential, connected to `port` and
    running its network loop."""
    import paho.mqtt.client as mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=terminal, protocol=mqtt.MQTTv5)
    client.username_pw_set(terminal, fleet.credential(terminal))
    if on_disconnect:
        client.on_disconnect = lambda c, u, flags, rc, props: on_disconnect(rc)
    if on_message:
        client.on_message = lambda c, u, message: on_message(message)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


class RawMQTT:
    """A byte-level MQTT 3.1.1 client, for what real clients hide: DUP flags, withheld PUBACKs,
    silence past the keepalive, odd CONNECTs."""

    def __init__(self, port, source=None):
        """`source`: the local address to connect from (127.0.0.2, ...)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0) if source else None)
        self.buffer = b""

    @staticmethod
    def string(text):
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    @staticmethod
    def packet(first, body):
        length, encoded = len(body), b""
        while True:
            byte, length = length % 128, length // 128
            encoded += bytes([byte | (0x80 if length else 0)])
            if not length:
                return bytes([first]) + encoded + body

    @staticmethod
    def varint(value):
        encoded = b""
        while True:
            byte, value = value % 128, value // 128
            encoded += bytes([byte | (0x80 if value else 0)])
            if not value:
                return encoded

    @classmethod
    def properties(cls, raw=b""):
        """An MQTT 5 property block: its length, then the already encoded properties."""
        return cls.varint(len(raw)) + raw

    def connect(self, client_id, password=None, keepalive=60, clean=True, level=4, will=None, props=b"", will_props=b""):
        """`will` is (topic, payload bytes, qos, retain); `props`/`will_props` are encoded MQTT 5
        properties (level 5 only)."""
        self.level = level
        flags = (0x02 if clean else 0) | ((0xC0) if password is not None else 0)
        if will:
            flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
        body = self.string("MQTT") + bytes([level, flags]) + keepalive.to_bytes(2, "big")
        if level == 5:
            body += self.properties(props)
        body += self.string(client_id)
        if will:
            if level == 5:
                body += self.properties(will_props)
            body += self.string(will[0]) + len(will[1]).to_bytes(2, "big") + will[1]
        if password is not None:
            body += self.string(client_id) + self.string(password)
        self.sock.sendall(self.packet(0x10, body))
        return self.read()

    def publish(self, topic, payload, qos=0, packet_id=None, dup=False, retain=False, props=b""):
        first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
        body = self.string(topic) + (packet_id.to_bytes(2, "big") if qos else b"")
        if getattr(self, "level", 4) == 5:
            body += self.properties(props)
        self.sock.sendall(self.packet(first, body + payload))

    def send(self, first, body):
        self.sock.sendall(self.packet(first, body))

    def read(self):
        """Returns (first byte, body) of the next packet, or None when the server closed."""
        while True:
            if len(self.buffer) >= 2:
                length, multiplier, index = 0, 1, 1
                while index < len(self.buffer):
                    byte = self.buffer[index]
                    length += (byte & 0x7F) * multiplier
                    multiplier *= 128
                    index += 1
                    if not byte & 0x80:
                        if len(self.buffer) >= index + length:
                            packet = (self.buffer[0], self.buffer[index:index + length])
                            self.buffer = self.buffer[index + length:]
                            return packet
                        break
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def subscribe(self, topic_filter, qos, packet_id=1):
        body = packet_id.to_bytes(2, "big") + (self.properties() if getattr(self, "level", 4) == 5 else b"")
        body += self.string(topic_filter) + bytes([qos])
        self.sock.sendall(self.packet(0x82, body))
        return self.read()

    def puback(self, packet_id):
        self.sock.sendall(bytes([0x40, 2]) + packet_id.to_bytes(2, "big"))

    def close(self):
        self.sock.close()


def parse_publish(first, body, level=4):
    """A PUBLISH's fields; with level 5 also its raw property bytes."""
    topic_length = int.from_bytes(body[:2], "big")
    topic = body[2:2 + topic_length].decode()
    qos = (first >> 1) & 3
    rest = body[2 + topic_length:]
    packet_id = int.from_bytes(rest[:2], "big") if qos else None
    rest = rest[2:] if qos else rest
    props = b""
    if level == 5:
        length, multiplier, index = 0, 1, 0
        while True:
            byte = rest[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        props, rest = rest[index:index + length], rest[index + length:]
    return {"topic": topic, "qos": qos, "dup": bool(first & 0x08), "retain": bool(first & 0x01), "id": packet_id,
            "payload": rest, "props": props}




def run_suite(label, tests, fleets):
    """Runs `tests` ([(name, fn, fleet name)]), each with its fleet out of `fleets` (name ->
    function making a Fleet: made and started when a test first needs it, so its free ports
    are picked just before they are bound), prints PASS/FAIL lines and a summary, prints the
    process logs on failure and exits non-zero if anything failed."""
    started_fleets = {}
    failures = 0
    try:
        for name, fn, fleet_name in tests:
            started = time.time()
            try:
                if fleet_name not in started_fleets:
                    started_fleets[fleet_name] = fleets[fleet_name]()
                    started_fleets[fleet_name].start_all()
                fn(started_fleets[fleet_name])
                print(f"PASS {name} ({time.time() - started:.1f}s)", flush=True)
            except Exception:
                failures += 1
                print(f"FAIL {name}", flush=True)
                traceback.print_exc()
    finally:
        for fleet in started_fleets.values():
            fleet.stop_all()
            if failures:
                for name in fleet.procs:
                    print(f"---- {name}.log (tail)")
                    with open(os.path.join(fleet.dir, name + ".log")) as f:
                        print("".join(f.readlines()[-30:]))
            else:
                shutil.rmtree(fleet.dir, ignore_errors=True)
    print(f"{label}: {len(tests) - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)
