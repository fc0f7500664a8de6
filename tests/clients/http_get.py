#!/usr/bin/env python3
"""GET a URL with urllib (or POST a JSON body with --post BODY, as HTTP Basic
user:password with --user); print {"status", "body", "www_authenticate"} as
JSON, and with --metrics the body parsed by prometheus_client's text-format
parser as {"name{label=value,...}": value}."""
import base64
import json
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
request = urllib.request.Request(url)
if "--post" in sys.argv:
    body = sys.argv[sys.argv.index("--post") + 1].encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
if "--user" in sys.argv:
    user = sys.argv[sys.argv.index("--user") + 1].encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(user).decode())
challenge = None
try:
    with urllib.request.urlopen(request, timeout=30) as r:
        status, body = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read().decode()
    challenge = e.headers.get("WWW-Authenticate")
out = {"status": status, "body": body, "www_authenticate": challenge}
if "--metrics" in sys.argv and status == 200:
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    out["samples"] = samples
print(json.dumps(out))
