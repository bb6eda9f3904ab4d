#!/usr/bin/env python3
"""Independent DKIM check: Python's dkimpy verifies messages against DNS records given here (no network).

usage: dkim_verify.py REQUEST.json

REQUEST.json: {"records": {"sel._domainkey.example.com": "v=DKIM1; k=ed25519; p=..."},
               "messages": {"name": "<base64 of the message bytes>"}}
Prints one JSON object {"name": {"ok": true|false, "error": "..."}} on standard output. dkimpy asks its
`dnsfunc` for the key record, which answers from "records" only: a name not given there has no record.
"""
import base64
import json
import sys

import dkim


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    records = {name.rstrip(".").lower(): value.encode() for name, value in request["records"].items()}

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.rstrip(".").lower())

    results = {}
    for name, data in request["messages"].items():
        message = base64.b64decode(data)
        try:
            verifier = dkim.DKIM(message)
            # Every signature must verify (Herald writes one; a relay may add more).
            head = message.split(b"\r\n\r\n", 1)[0]
            count = sum(1 for line in head.split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
            ok = count > 0 and all(verifier.verify(idx=i, dnsfunc=dnsfunc) for i in range(count))
            results[name] = {"ok": bool(ok), "signatures": count}
        except Exception as e:  # dkimpy raises on malformed signatures; that is a failure to verify
            results[name] = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
