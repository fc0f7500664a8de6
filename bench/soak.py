#!/usr/bin/env python3
"""The soak (bench/soak.sh runs it): mixed traffic into one sluice-mta for
--minutes while faults are injected on a schedule, then a check, from the
sinks' dumps and the MTA's log records, that every message the MTA answered
250 reached its fate: delivered (at least once; duplicates are counted) for
ok.soak, throttled.soak and flaky.soak, bounced for hard.soak.

Traffic: paced smtplib clients, sizes 1 KB-1 MB, a fifth of them through a
deferred_queue listener; throttled.soak has a max_message_rate that the
good reloads move; flaky.soak's sink answers 451 to RCPT a third of the
time; hard.soak's answers 550.
Faults, in turn: kill -9 and restart, a good reload, a sink outage, a
broken reload, the spool volume (a tmpfs) filled past min_free_space, a
burst of large messages into the MTA's memory cgroup.
Every few seconds: the MTA's RSS, working set, open fds and threads."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from soak_parts import Clients, Mta, MemoryCgroup, Sink, Tally

PORT, DEFERRED_PORT, ADMIN = 2525, 2526, 8025
SINK_OK, SINK_FLAKY, SINK_HARD = 2701, 2702, 2703
DOMAINS = ["ok.soak", "throttled.soak", "flaky.soak", "hard.soak"]
WEIGHTS = [55, 15, 20, 10]
MIB = 1 << 20

POLICY = """
local kumo = require 'kumo'
kumo.on('pre_init', function()
  kumo.set_memory_soft_limit({soft})
  kumo.set_memory_low_thresh({low})
end)
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{spool}' }}
  kumo.define_spool {{ name = 'meta', path = '{spool}' }}
  kumo.configure_local_logs {{ log_dir = '{logs}', headers = {{ 'X-Soak-Id' }},
    max_file_size = 50000000 }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{port}', max_message_size = 2000000 }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{deferred}', max_message_size = 2000000,
    deferred_queue = true }}
  kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}
end)
local SINKS = {{ ['ok.soak'] = {ok}, ['throttled.soak'] = {ok}, ['flaky.soak'] = {flaky},
  ['hard.soak'] = {hard} }}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local config = {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:' .. (SINKS[domain] or {ok}) }} }} }},
    retry_interval = '5 seconds', max_retry_interval = '20 seconds',
  }}
  if domain == 'throttled.soak' then config.max_message_rate = '{rate}' end
  return kumo.make_queue_config(config)
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled',
    connection_limit = 8, max_ready = 20000 }}
end)
kumo.on('smtp_server_message_deferred_inject', function(msg, conn_meta) end)
"""


class Soak:
    def __init__(self, a):
        self.a = a
        self.work = tempfile.mkdtemp(prefix="sluice-soak.", dir="/var/tmp")
        os.chmod(self.work, 0o755)  # smtp-sink writes its dumps as nobody
        self.spool = f"{self.work}/spool"
        os.makedirs(self.spool)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={a.spool_mib}m", "tmpfs", self.spool],
                       check=True)
        self.logs = f"{self.work}/logs"
        self.policy = f"{self.work}/policy.lua"
        self.rate_index = 0
        self.write_policy()
        self.cgroup = MemoryCgroup(f"sluice-soak-{os.getpid()}", a.limit_mib * MIB)
        self.mta = Mta(a.bin, self.policy, PORT, ADMIN, self.cgroup, f"{self.work}/mta.log")
        self.sinks = {
            "ok": Sink(SINK_OK, f"{self.work}/sink-ok"),
            "flaky": Sink(SINK_FLAKY, f"{self.work}/sink-flaky"),
            "hard": Sink(SINK_HARD, f"{self.work}/sink-hard", ["-f", "RCPT"]),
        }
        self.clients = Clients(DOMAINS, WEIGHTS)
        self.tally = Tally([s.dump for s in self.sinks.values()], self.logs)
        self.faults = []  # (time, kind, what was seen)
        self.samples = []  # (time, life, sample)
        self.life = 0
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def write_policy(self, broken=False):
        rate = ["5/s", "10/s"][self.rate_index % 2]
        text = POLICY.format(soft=self.a.soft_mib * MIB, low=self.a.low_mib * MIB, spool=self.spool,
                             logs=self.logs, port=PORT, deferred=DEFERRED_PORT, admin=ADMIN,
                             ok=SINK_OK, flaky=SINK_FLAKY, hard=SINK_HARD, rate=rate)
        if broken:
            text += "\nkumo.on('get_queue_config', function(\n"  # a syntax error
        tmp = self.policy + ".tmp"
        open(tmp, "w").write(text)
        os.rename(tmp, self.policy)

    def now(self):
        return time.monotonic() - self.t0

    def fault(self, kind, seen):
        self.faults.append((round(self.now()), kind, seen))
        print(f"{self.now():7.0f}s {kind}: {json.dumps(seen)}", flush=True)

    # the faults
    def kill9(self):
        with self.lock:
            self.mta.kill9()
            t = time.monotonic()
            self.mta.start()
            self.life += 1
        self.fault("kill -9", {"back_listening_s": round(time.monotonic() - t, 2)})

    def reload(self, broken):
        if not broken:
            self.rate_index += 1
        self.write_policy(broken)
        status, body = self.mta.http("/api/admin/bump-config-epoch", b"")
        seen = {"status": status, "reply": body[:160]}
        if broken:
            self.write_policy()  # put the good policy back
            seen["restored"] = self.mta.http("/api/admin/bump-config-epoch", b"")[0]
        self.fault("broken reload" if broken else "good reload", seen)

    def sink_outage(self, seconds=30):
        self.sinks["ok"].stop()
        time.sleep(seconds)
        self.sinks["ok"].start()
        self.fault("sink outage", {"seconds": seconds})

    def spool_full(self, seconds=20):
        """A ballast file keeps the spool volume at 5% free (below the default
        min_free_space of 10%) for `seconds`, grown as deliveries free space."""
        ballast = f"{self.spool}/ballast"
        refused0, acked0 = self.count_refused(), self.count_acked()
        unready, size = False, 0
        deadline = time.monotonic() + seconds
        with open(ballast, "wb") as f:
            while time.monotonic() < deadline:
                st = os.statvfs(self.spool)
                grow = st.f_bavail * st.f_frsize - st.f_blocks * st.f_frsize // 20
                if grow > 0:
                    os.posix_fallocate(f.fileno(), size, grow)
                    size += grow
                unready |= self.mta.http("/api/check-readiness/v1")[0] == 503
                time.sleep(0.2)
        acked = self.count_acked() - acked0
        os.unlink(ballast)
        self.fault("spool full", {"ballast_mib": size // MIB, "unready_seen": unready,
                                  "refused_meanwhile": self.count_refused() - refused0,
                                  "acked_meanwhile": acked})

    def memory_burst(self, seconds=20):
        refused0, acked0 = self.count_refused(), self.count_acked()
        oom0 = self.cgroup.oom_kills()
        ts = self.clients.burst(PORT, 40, seconds, 500_000)
        peak, short = 0.0, False
        while any(t.is_alive() for t in ts):
            m = self.mta.metrics()
            peak = max(peak, m.get("sluice_memory_usage_bytes", 0))
            short |= m.get("sluice_memory_short") == 1.0
            time.sleep(0.2)
        self.fault("memory burst", {"working_set_peak_mib": round(peak / MIB),
                                    "short_seen": short, "alive": self.mta.alive(),
                                    "oom_kills": self.cgroup.oom_kills() - oom0,
                                    "refused_meanwhile": self.count_refused() - refused0,
                                    "acked_meanwhile": self.count_acked() - acked0})

    def count_acked(self):
        with self.clients.lock:
            return sum(1 for _, o in self.clients.outcomes.values() if o == "ack")

    def count_refused(self):
        with self.clients.lock:
            refused = sum(1 for _, o in self.clients.outcomes.values() if isinstance(o, int))
            return refused + sum(self.clients.greetings.values())

    # the loops beside the traffic
    def flaky_cycle(self, done):
        """flaky.soak's sink: 40 s fine, 20 s answering 451 to RCPT, until
        `done` is set; it is left answering normally."""
        sink = self.sinks["flaky"]
        while not done.wait(40):
            sink.stop()
            sink.start(["-r", "RCPT"])
            done.wait(20)
            sink.stop()
            sink.start([])

    def sampler(self, stop):
        while not stop.is_set():
            with self.lock:
                if not self.mta.alive():
                    # not one of our kills (they hold the lock): an OOM kill or a crash
                    code = self.mta.proc.returncode
                    self.mta.start()
                    self.life += 1
                    self.fault("unexpected exit", {"returncode": code})
                s = self.mta.sample()
                life = self.life
            if s:
                self.samples.append((round(self.now()), life, s))
            stop.wait(5)

    def run(self):
        a = self.a
        for s in self.sinks.values():
            s.start()
        self.mta.start()
        stop = threading.Event()
        threading.Thread(target=self.sampler, args=(stop,), daemon=True).start()
        time.sleep(6)
        idle = self.samples[-1][2]
        until = time.monotonic() + a.minutes * 60
        traffic = (self.clients.paced(PORT, a.rate * 0.8, 8, until)
                   + self.clients.paced(DEFERRED_PORT, a.rate * 0.2, 2, until))
        for t in traffic:
            t.start()
        flaky_done = threading.Event()
        flaky = threading.Thread(target=self.flaky_cycle, args=(flaky_done,), daemon=True)
        flaky.start()
        faults = [self.kill9, lambda: self.reload(False), self.sink_outage,
                  lambda: self.reload(True), self.spool_full, self.memory_burst]
        i = 0
        # no kill -9 after the first third, so that the last life is long
        # enough to show a leak
        while time.monotonic() + a.every < until:
            time.sleep(a.every)
            f = faults[i % len(faults)]
            if f == self.kill9 and time.monotonic() > until - a.minutes * 40:
                f = self.memory_burst
            f()
            i += 1
        for t in traffic:
            t.join()
        self.fault("traffic stopped", {})
        flaky_done.set()
        flaky.join()
        last = self.drain()
        stop.set()
        time.sleep(1)
        end = self.mta.sample()
        self.mta.stop()
        return self.report(idle, last, end)

    def pending(self):
        """Acknowledged messages without their fate yet."""
        self.tally.refresh()
        out = []
        with self.clients.lock:
            items = list(self.clients.outcomes.items())
        for n, (domain, outcome) in items:
            if outcome != "ack":
                continue
            done = n in self.tally.bounces if domain == "hard.soak" else n in self.tally.copies
            if not done:
                out.append(n)
        return out

    def drain(self):
        deadline = time.monotonic() + self.a.drain_minutes * 60
        while True:
            left = self.pending()
            if not left or time.monotonic() > deadline:
                self.fault("drained" if not left else "drain timed out", {"pending": len(left)})
                return left
            time.sleep(10)

    def report(self, idle, pending, end):
        c, t = self.clients.outcomes, self.tally
        acked = {n: d for n, (d, o) in c.items() if o == "ack"}
        unknown = {n: d for n, (d, o) in c.items() if o == "unknown"}
        refused = {}
        for _, o in c.values():
            if isinstance(o, int):
                refused[o] = refused.get(o, 0) + 1
        # hard.soak delivered, or any other domain bounced
        wrong = [n for n, d in acked.items()
                 if ((n in t.copies) if d == "hard.soak" else (n in t.bounces))]
        dups = {n: k for n, k in t.copies.items() if k > 1}
        last_life = [s for s in self.samples if s[1] == self.life]
        kinds = {}
        for _, k, _ in self.faults:
            kinds[k] = kinds.get(k, 0) + 1
        out = {
            "minutes": self.a.minutes,
            "messages_tried": len(c), "acknowledged": len(acked),
            "acknowledged_by_domain": {d: sum(1 for x in acked.values() if x == d) for d in DOMAINS},
            "refused_by_code": dict(sorted(refused.items())),
            "refused_at_greeting_by_code": dict(sorted(self.clients.greetings.items())),
            "unknown_outcome": len(unknown),
            "unknown_but_delivered": sum(1 for n in unknown if n in t.copies),
            "delivered_ids": len(t.copies), "bounced_ids": len(t.bounces),
            "lost": len(pending), "wrong_fate": len(wrong),
            "duplicate_ids": len(dups), "duplicate_copies": sum(k - 1 for k in dups.values()),
            "acked_delivered_without_delivery_record":
                sum(1 for n in acked if n in t.copies and n not in t.delivery_records),
            "faults": kinds,
            "idle_at_start": idle, "idle_at_end": end,
            "last_life": {"minutes": round((last_life[-1][0] - last_life[0][0]) / 60, 1),
                          "first": last_life[0][2], "last": last_life[-1][2],
                          "max_rss": max(s[2]["rss"] for s in last_life),
                          "max_fds": max(s[2]["fds"] for s in last_life),
                          "max_threads": max(s[2]["threads"] for s in last_life),
                          # every ~2 minutes: (s, RSS MiB, working set MiB, fds, threads)
                          "series": [(t, s["rss"] // MIB, int(s["working_set"] or 0) // MIB,
                                      s["fds"], s["threads"]) for t, _, s in last_life[::24]]},
            "work": self.work,
        }
        json.dump({"report": out, "samples": self.samples, "faults": self.faults},
                  open(f"{self.work}/soak.json", "w"))
        series = out["last_life"].pop("series")
        print(json.dumps(out, indent=1))
        print("last life, every ~2 min: [s, RSS MiB, working set MiB, fds, threads]")
        for row in series:
            print(f"  {list(row)}")
        exits = kinds.get("unexpected exit", 0)
        ok = not pending and not wrong and not exits
        print("soak: " + ("every acknowledged message reached its fate, the MTA never died unasked"
                          if ok else f"FAILED: {len(pending)} lost, {len(wrong)} with the wrong fate, "
                          f"{exits} unexpected exits"))
        return ok

    def cleanup(self):
        for s in self.sinks.values():
            s.stop()
        if self.mta.proc and self.mta.alive():
            self.mta.kill9()
        self.cgroup.remove()
        subprocess.run(["umount", self.spool], check=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--rate", type=float, default=40, help="messages/s offered")
    p.add_argument("--every", type=float, default=45, help="seconds between faults")
    p.add_argument("--spool-mib", type=int, default=384)
    p.add_argument("--limit-mib", type=int, default=768, help="the cgroup's memory limit")
    p.add_argument("--soft-mib", type=int, default=256)
    p.add_argument("--low-mib", type=int, default=192)
    p.add_argument("--drain-minutes", type=float, default=10)
    soak = Soak(p.parse_args())
    try:
        return soak.run()
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
