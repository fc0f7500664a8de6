#!/usr/bin/env python3
"""Send mail with Python's smtplib and report every reply as JSON lines.

Used by the end-to-end tests as a real SMTP client that no one here wrote.
Each message carries an `X-Test-Seq` header so tests can match deliveries to
the 250 replies that promised them.
"""
import argparse
import json
import smtplib
import ssl
import sys
import threading
import time


def build(seq, size, sender, rcpts):
    head = (
        f"From: <{sender}>\r\nTo: <{rcpts[0]}>\r\nSubject: test {seq}\r\n"
        f"X-Test-Seq: {seq}\r\nMessage-ID: <seq-{seq}@test.example>\r\n\r\n"
    )
    line = ("0123456789" * 7 + "\r\n").encode()
    body = bytearray()
    while len(body) < size:
        body += line
    return head.encode() + bytes(body[:size]) + b"\r\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--rcpts", type=int, default=1)
    p.add_argument("--domain", default="example.com")
    p.add_argument("--sender", default="sender@example.org")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--cafile")
    p.add_argument("--per-connection", type=int, default=50)
    p.add_argument("--seq-offset", type=int, default=0)
    a = p.parse_args()

    lock = threading.Lock()
    next_seq = [a.seq_offset]
    end = a.seq_offset + a.count

    def take():
        with lock:
            if next_seq[0] >= end:
                return None
            s = next_seq[0]
            next_seq[0] += 1
            return s

    def report(obj):
        with lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def worker():
        while True:
            # the message in flight: reported exactly once, whatever happens
            pending = take()
            if pending is None:
                return
            try:
                s = smtplib.SMTP("127.0.0.1", a.port, timeout=60)
                s.ehlo("client.test")
                if a.starttls:
                    ctx = ssl.create_default_context(cafile=a.cafile)
                    s.starttls(context=ctx)
                    s.ehlo("client.test")
                sent = 0
                while pending is not None:
                    seq = pending
                    rcpts = [f"user{seq}-{i}@{a.domain}" for i in range(a.rcpts)]
                    try:
                        code, msg = s.mail(a.sender, [f"SIZE={a.size}"] if "size" in s.esmtp_features else [])
                        if code != 250:
                            raise smtplib.SMTPResponseException(code, msg)
                        bad = {}
                        for r in rcpts:
                            code, msg = s.rcpt(r)
                            if code != 250:
                                bad[r] = (code, msg.decode())
                        body = build(seq, a.size, a.sender, rcpts)
                        started = time.monotonic()
                        code, msg = s.data(body)
                        # DATA command to final reply: the latency a client sees for the message
                        ms = (time.monotonic() - started) * 1000
                        report({"seq": seq, "code": code, "reply": msg.decode(), "rcpt_errors": bad,
                                "tls": a.starttls and isinstance(s.sock, ssl.SSLSocket), "ms": ms})
                        pending = None
                    except smtplib.SMTPResponseException as e:
                        report({"seq": seq, "code": e.smtp_code, "reply": str(e.smtp_error)})
                        pending = None
                        s.rset()
                    sent += 1
                    if sent >= a.per_connection:
                        break
                    pending = take()
                s.quit()
            except Exception as e:  # connection lost: the message in flight has no 250
                if pending is not None:
                    report({"seq": pending, "code": 0, "reply": repr(e)})

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
