#!/usr/bin/env python3
"""An SMTP session of raw lines from a chosen source address: read the
banner, then send each LINE and read its reply. Prints the replies as JSON,
[{"code": 220, "text": "..."}, ...]; stops early if the server closes."""
import argparse
import json
import socket

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--source", default="127.0.0.1")
p.add_argument("--no-banner", action="store_true",
               help="send the lines without waiting for a banner first")
p.add_argument("lines", nargs="*")
args = p.parse_intermixed_args()

s = socket.create_connection(("127.0.0.1", args.port), timeout=30,
                             source_address=(args.source, 0))
f = s.makefile("rb")


def reply():
    text = []
    while True:
        try:
            line = f.readline()
        except OSError:  # reset by a server that closed the session
            return None
        if not line:
            return None
        line = line.decode()
        text.append(line[4:].rstrip("\r\n"))
        if line[3:4] != "-":
            return {"code": int(line[:3]), "text": "\n".join(text)}


replies = [] if args.no_banner else [reply()]
for line in args.lines:
    if replies and replies[-1] is None:
        break
    try:
        s.sendall(line.encode() + b"\r\n")
    except OSError:  # the server closed the session
        break
    replies.append(reply())
print(json.dumps([r for r in replies if r is not None]))
