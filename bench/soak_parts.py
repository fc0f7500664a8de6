"""The parts bench/soak.py drives: a memory cgroup, the MTA process, the
smtp-sink peers, the SMTP clients (Python's smtplib) and the tallies read
back from the sinks' dumps and the MTA's log records."""
import json
import os
import random
import signal
import smtplib
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request


def wait_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class MemoryCgroup:
    """A memory cgroup under our own (v2 where its memory controller is
    ours to use, else v1), so that the kernel enforces a pod-like limit."""

    def __init__(self, name, limit):
        own = open("/proc/self/cgroup").read().splitlines()
        v2 = next((l.split(":", 2)[2] for l in own if l.startswith("0::")), None)
        base = "/sys/fs/cgroup"
        if v2 is not None and os.path.exists(f"{base}/cgroup.controllers"):
            parent = base + v2
            if "memory" in open(f"{parent}/cgroup.controllers").read().split():
                self.dir, self.version = f"{parent}/{name}", 2
                os.makedirs(self.dir, exist_ok=True)
                open(f"{self.dir}/memory.max", "w").write(str(limit))
                return
        v1 = next(l.split(":", 2)[2] for l in own if "memory" in l.split(":")[1].split(","))
        self.dir, self.version = f"{base}/memory{v1}/{name}", 1
        os.makedirs(self.dir, exist_ok=True)
        open(f"{self.dir}/memory.limit_in_bytes", "w").write(str(limit))
        try:
            open(f"{self.dir}/memory.swappiness", "w").write("0")
        except OSError:
            pass

    def oom_kills(self):
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in open(f"{self.dir}/{name}"):
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.dir)
                return
            except OSError:
                time.sleep(0.1)


class Mta:
    """sluice-mta on a policy file, inside the cgroup; restartable."""

    def __init__(self, binary, policy, port, admin, cgroup, log):
        self.binary, self.policy, self.port, self.admin = binary, policy, port, admin
        self.cgroup, self.log, self.proc = cgroup, log, None

    def start(self):
        procs = f"{self.cgroup.dir}/cgroup.procs"
        cmd = f'echo $$ > {procs} && exec {self.binary} --policy {self.policy}'
        self.proc = subprocess.Popen(["sh", "-c", cmd], stderr=open(self.log, "ab"),
                                     stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        if not wait_port(self.port, 60):
            raise RuntimeError(f"sluice-mta did not listen on {self.port}; see {self.log}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill9()

    def alive(self):
        return self.proc.poll() is None

    def http(self, path, post=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}",
                                     data=post, method="POST" if post is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return None, str(e)

    def metrics(self):
        """Every sample of /metrics, by its name and labels as written."""
        status, body = self.http("/metrics")
        if status != 200:
            return {}
        return {name: float(value) for name, _, value in
                (l.rpartition(" ") for l in body.splitlines() if l and not l.startswith("#"))}

    def sample(self):
        """RSS (bytes), open fds and threads of the MTA process now."""
        pid = self.proc.pid
        try:
            status = open(f"/proc/{pid}/status").read()
            fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
            rss = int(fields["VmRSS"].split()[0]) * 1024
            threads = int(fields["Threads"])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, KeyError):
            return None
        return {"rss": rss, "fds": fds, "threads": threads,
                "working_set": self.metrics().get("sluice_memory_usage_bytes")}


class Sink:
    """Postfix's smtp-sink dumping every message into one directory; can be
    stopped (an outage) and restarted with other options (e.g. -r RCPT)."""

    def __init__(self, port, dump, options=()):
        self.port, self.dump, self.options, self.proc = port, dump, list(options), None
        os.makedirs(dump, exist_ok=True)
        os.chmod(dump, 0o777)  # smtp-sink drops to nobody before writing

    def start(self, options=None):
        if options is not None:
            self.options = list(options)
        self.proc = subprocess.Popen(
            ["/usr/sbin/smtp-sink", "-c", "-u", "nobody", "-d", f"{self.dump}/%s.", *self.options,
             f"127.0.0.1:{self.port}", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port):
            raise RuntimeError(f"smtp-sink did not listen on {self.port}")

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# sizes from 1 KB to 1 MB, most of them small, as bulk mail is
SIZES = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000]
WEIGHTS = [20, 20, 15, 12, 10, 9, 6, 4, 3, 1]
LINE = b"0123456789" * 7 + b"\r\n"
BODIES = {s: (LINE * (s // len(LINE) + 1))[:s] for s in SIZES}


def message(soak_id, domain, size):
    head = (f"From: <sender@soak.example>\r\nTo: <user{soak_id}@{domain}>\r\n"
            f"Subject: soak {soak_id}\r\nX-Soak-Id: {soak_id}\r\n"
            f"Message-ID: <soak-{soak_id}@soak.example>\r\n\r\n").encode()
    # a line that needs dot-stuffing, then the filler
    return head + b".a line that starts with a dot\r\n" + BODIES[size] + b"\r\n"


class Clients:
    """SMTP clients sending paced mail; every message's outcome is kept:
    'ack' (250 to DATA), a refusal code, or 'unknown' (the connection broke
    after DATA was sent, so the server may or may not have it)."""

    def __init__(self, domains, weights):
        self.domains, self.weights = domains, weights
        self.lock = threading.Lock()
        self.next_id = 0
        self.outcomes = {}  # id -> (domain, outcome)
        self.greetings = {}  # code -> connections refused at the greeting

    def take_id(self):
        with self.lock:
            self.next_id += 1
            return self.next_id

    def record(self, soak_id, domain, outcome):
        with self.lock:
            self.outcomes[soak_id] = (domain, outcome)

    def session(self, port, count, size=None):
        """Up to `count` messages over one connection."""
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=120)
        except smtplib.SMTPConnectError as e:
            # refused at the greeting (421 while short of memory or disk)
            with self.lock:
                self.greetings[e.smtp_code] = self.greetings.get(e.smtp_code, 0) + 1
            raise
        try:
            s.ehlo("soak.client")
            for _ in range(count):
                domain = random.choices(self.domains, self.weights)[0]
                msg_size = size or random.choices(SIZES, WEIGHTS)[0]
                soak_id = self.take_id()
                code, _ = s.mail("sender@soak.example")
                if code == 250:
                    code, _ = s.rcpt(f"user{soak_id}@{domain}")
                if code != 250:
                    self.record(soak_id, domain, code)
                    s.rset()
                    continue
                try:
                    code, _ = s.data(message(soak_id, domain, msg_size))
                except smtplib.SMTPDataError as e:
                    code = e.smtp_code
                except (OSError, smtplib.SMTPException):
                    self.record(soak_id, domain, "unknown")
                    raise
                self.record(soak_id, domain, "ack" if code == 250 else code)
                if code != 250:
                    s.rset()
            s.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            s.close()

    def paced(self, port, rate, threads, until):
        """`threads` clients sharing `rate` messages/s until `until`."""
        interval = threads / rate

        def worker():
            while time.monotonic() < until:
                t0 = time.monotonic()
                try:
                    self.session(port, 1)
                except OSError:
                    time.sleep(0.2)  # the MTA is restarting
                time.sleep(max(0.0, interval - (time.monotonic() - t0)) * random.uniform(0.5, 1.5))

        return [threading.Thread(target=worker, daemon=True) for _ in range(threads)]

    def burst(self, port, threads, seconds, size):
        """`threads` clients as fast as they can with `size`-byte messages."""
        until = time.monotonic() + seconds

        def worker():
            while time.monotonic() < until:
                try:
                    self.session(port, 5, size)
                except OSError:
                    time.sleep(0.2)

        ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        return ts


class Tally:
    """What arrived: X-Soak-Id copies in the sinks' dumps, and Delivery and
    Bounce records in the MTA's logs; read incrementally."""

    def __init__(self, dumps, log_dir):
        self.dumps, self.log_dir = dumps, log_dir
        self.seen_files, self.offsets = set(), {}
        self.copies, self.delivery_records, self.bounces = {}, {}, {}

    def refresh(self):
        for d in self.dumps:
            for name in os.listdir(d):
                path = f"{d}/{name}"
                if path in self.seen_files:
                    continue
                with open(path, "rb") as f:
                    head = f.read(16384)
                i = head.find(b"\nX-Soak-Id: ")
                if i < 0:
                    continue  # still being written: read it next time
                self.seen_files.add(path)
                n = int(head[i + 12:head.index(b"\n", i + 12)].strip())
                self.copies[n] = self.copies.get(n, 0) + 1
        for name in sorted(os.listdir(self.log_dir)):
            path = f"{self.log_dir}/{name}"
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line being written waits
            self.offsets[path] = self.offsets.get(path, 0) + end
            for line in data[:end].splitlines():
                self.record(json.loads(line))

    def record(self, r):
        headers = {k.lower(): v for k, v in (r.get("headers") or {}).items()}
        soak_id = headers.get("x-soak-id")
        if soak_id is None:
            return
        n = int(str(soak_id).strip())
        if r["type"] == "Delivery":
            self.delivery_records[n] = self.delivery_records.get(n, 0) + 1
        elif r["type"] == "Bounce":
            self.bounces[n] = r["response"]["code"]
