#!/usr/bin/env python3
"""An SMTP sink that logs every session's open and close and every message's
arrival, with a monotonic timestamp, one JSON line each, flushed at once.
What the fleet tests count at the destination: concurrent sessions (from
open/close, not sampled) and the delivery rate (from arrival times).

    session_sink.py PORT LOG [--delay-ms N]

--delay-ms holds each message's final reply, so sessions stay open while
they deliver.
"""
import argparse
import asyncio
import json
import re
import time

SEQ = re.compile(rb"^X-Test-Seq:\s*(\d+)", re.I | re.M)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("log")
    p.add_argument("--delay-ms", type=int, default=0)
    args = p.parse_args()
    out = open(args.log, "a", buffering=1)
    serial = 0

    def log(**kw):
        kw["t"] = time.monotonic()
        out.write(json.dumps(kw) + "\n")

    async def session(reader, writer):
        nonlocal serial
        serial += 1
        sid = serial
        log(ev="open", sid=sid)
        try:
            writer.write(b"220 session-sink ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb in (b"EHLO",):
                    writer.write(b"250-session-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
                elif verb == b"HELO":
                    writer.write(b"250 session-sink\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    body = []
                    while True:
                        l = await reader.readline()
                        if not l or l in (b".\r\n", b".\n"):
                            break
                        body.append(l)
                    m = SEQ.search(b"".join(body[:40]))
                    if args.delay_ms:
                        await asyncio.sleep(args.delay_ms / 1000)
                    log(ev="msg", sid=sid, seq=int(m.group(1)) if m else None)
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"502 5.5.2 unknown command\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            log(ev="close", sid=sid)
            writer.close()

    async def serve():
        server = await asyncio.start_server(session, "127.0.0.1", args.port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
