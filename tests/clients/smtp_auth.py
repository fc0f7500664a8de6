#!/usr/bin/env python3
"""One SMTP session with Python's smtplib: EHLO, STARTTLS (unless --no-tls),
AUTH (PLAIN or LOGIN, --attempts times), then MAIL/RCPT/DATA to --to.
Prints what the server answered at each step as JSON, e.g.
{"features_plain": [...], "features_tls": [...], "auth": [[535, "..."], ...],
 "rcpt": [250, "..."], "data": [250, "..."], "closed": false}."""
import argparse
import json
import smtplib
import ssl

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--user")
p.add_argument("--password", default="")
p.add_argument("--authz", default="", help="PLAIN authorization identity")
p.add_argument("--mechanism", default="PLAIN", choices=["PLAIN", "LOGIN"])
p.add_argument("--no-tls", action="store_true")
p.add_argument("--attempts", type=int, default=1)
p.add_argument("--to", default="someone@elsewhere.example")
p.add_argument("--source", help="local address to connect from")
p.add_argument("--host", default="127.0.0.1")
args = p.parse_args()

out = {"closed": False}
source = (args.source, 0) if args.source else None
s = smtplib.SMTP(args.host, args.port, source_address=source, timeout=30)
try:
    s.ehlo("client.example")
    out["features_plain"] = sorted(s.esmtp_features)
    if not args.no_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s.starttls(context=ctx)
        s.ehlo("client.example")
        out["features_tls"] = sorted(s.esmtp_features)
    if args.user is not None:
        s.user, s.password = args.user, args.password

        def plain(challenge=None):
            return f"{args.authz}\0{args.user}\0{args.password}"

        out["auth"] = []
        for _ in range(args.attempts):
            try:
                if args.mechanism == "PLAIN":
                    code, msg = s.auth("PLAIN", plain)
                else:
                    code, msg = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            except smtplib.SMTPAuthenticationError as e:
                code, msg = e.smtp_code, e.smtp_error
            out["auth"].append([code, msg.decode()])
    code, msg = s.mail("sender@example.org")
    out["mail"] = [code, msg.decode()]
    code, msg = s.rcpt(args.to)
    out["rcpt"] = [code, msg.decode()]
    if code == 250:
        code, msg = s.data(b"Subject: authenticated\r\n\r\nhello\r\n")
        out["data"] = [code, msg.decode()]
    s.quit()
except smtplib.SMTPServerDisconnected:
    out["closed"] = True
print(json.dumps(out))
