#!/usr/bin/env python3
"""Measure reload-to-applied: after a routing change at time --t0 (epoch
seconds), send a probe message every 20 ms, each on a new connection, until
one arrives in --arrived (the new destination's dump directory); print the
seconds from --t0 to the sending of the first probe that went there."""
import argparse, os, smtplib, time, urllib.request

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--t0", type=float, required=True)
p.add_argument("--arrived", required=True)
p.add_argument("--bump", help="POST this URL first (an explicit reload)")
p.add_argument("--timeout", type=float, default=60)
a = p.parse_args()

if a.bump:
    urllib.request.urlopen(urllib.request.Request(a.bump, data=b"", method="POST")).read()
deadline = time.time() + a.timeout
while time.time() < deadline:
    sent = time.time()
    with smtplib.SMTP("127.0.0.1", a.port, timeout=30) as s:
        s.sendmail("probe@bench.local", ["rcpt@example.com"],
                   f"X-Probe-Sent: {sent:.6f}\r\nSubject: probe\r\n\r\nprobe\r\n")
    arrived = []
    for name in os.listdir(a.arrived):
        text = open(os.path.join(a.arrived, name), errors="replace").read()
        arrived += [float(l.split(":", 1)[1]) for l in text.splitlines() if l.startswith("X-Probe-Sent:")]
    if arrived:
        print(f"{min(arrived) - a.t0:.3f}")
        raise SystemExit(0)
    time.sleep(0.02)
raise SystemExit("no probe reached the new destination")
