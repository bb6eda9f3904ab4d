"""Verifies Herald's webhook requests with the published Standard Webhooks library (issue 12's tests).

Reads JSON on stdin: {"secret": "whsec_...", "requests": [{"headers": {...}, "body": "..."}]} and verifies
each request with standardwebhooks.Webhook(secret).verify(body, headers), which checks the signature and the
timestamp's tolerance. Prints "verified N" and exits 0, or names the first request that fails and exits 1.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    job = json.load(sys.stdin)
    hook = Webhook(job["secret"])
    for i, request in enumerate(job["requests"]):
        try:
            hook.verify(request["body"], request["headers"])
        except Exception as error:  # the library raises WebhookVerificationError; any failure is a failure
            print(f"request {i} ({request['headers'].get('webhook-id')}): {error!r}")
            return 1
    print(f"verified {len(job['requests'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
