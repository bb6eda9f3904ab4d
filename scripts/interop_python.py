#!/usr/bin/env python3
"""Interop check: Python's `email` package (policy.default) reads what
`herald compose` writes.

usage: interop_python.py HERALD_BINARY [SIGNED_DIR]

Composes a battery of tricky requests with the binary (subjects and names in
Chinese, emoji and right-to-left scripts, 300-character subjects, 5,000-character
lines, lone CR/LF, lines starting with '.' or 'From ', random binary
attachments, file names in many languages, every MIME structure), parses each
output with email.parser.BytesParser(policy=policy.default) and checks that
Python decodes the same subject, addresses, text, HTML, file names and
attachment bytes, with no parser defects. Also checks that invalid requests
exit non-zero naming the field. Prints one summary line; exits 1 on failure.

DKIM (issue 13): every message is composed with `--sign`, with an Ed25519 key for shop.example and an RSA-2048
key for example.com made by `herald dkim generate` in a scratch database, and must verify with dkimpy against
those records (served by its `dnsfunc`, no network); a copy with one body byte changed must not. With
SIGNED_DIR, the signed messages and records.json are written there for the Rust side to check with mail-auth.
"""
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
from email import policy
from email.parser import BytesParser

import dkim

HERALD = sys.argv[1] if len(sys.argv) > 1 else "herald"
RNG = random.Random(20261126)
FAILURES = []
CHECKED = 0
SIGNED = 0
# Set up in main(): the scratch store with the keys, their DNS records, where signed messages go.
DKIM_ENV = dict(os.environ)
RECORDS = {}
SIGNED_DIR = sys.argv[2] if len(sys.argv) > 2 else None


def fail(case, what):
    FAILURES.append("%s: %s" % (case, what))


def norm(s):
    return s.replace("\r\n", "\n").replace("\r", "\n")


def idna_addr(addr):
    local, domain = addr.rsplit("@", 1)
    if local.isascii() and not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    return "%s@%s" % (local, domain)


def split_mailbox(s):
    """(display name, address) as the request gives it."""
    if s.endswith(">"):
        name, addr = s[:-1].rsplit("<", 1)
        name = name.strip()
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return name, addr.strip()
    return "", s.strip()


def as_list(v):
    if v is None:
        return []
    return [v] if isinstance(v, str) else v


def compose(case, req, workdir, extra=()):
    path = os.path.join(workdir, "req.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(req, f, ensure_ascii=False)
    p = subprocess.run([HERALD, "compose", "--sign", path, *extra], capture_output=True, env=DKIM_ENV)
    if p.returncode != 0:
        fail(case, "herald compose failed: %s" % p.stderr.decode(errors="replace").strip())
        return None
    return p.stdout


def check_lines(case, raw, eight_bit):
    for i, line in enumerate(raw.split(b"\r\n")[:-1]):
        if b"\n" in line or b"\r" in line:
            fail(case, "bare CR or LF in line %d" % i)
            return
        if len(line) > 998:
            fail(case, "line %d has %d octets" % (i, len(line)))
            return
    if not raw.endswith(b"\r\n"):
        fail(case, "does not end with CRLF")
    if not eight_bit and not all(b < 128 for b in raw):
        fail(case, "not 7-bit clean")


def check(case, req, workdir, eight_bit=False):
    global CHECKED
    raw = compose(case, req, workdir, ["--8bit"] if eight_bit else [])
    if raw is None:
        return
    CHECKED += 1
    check_lines(case, raw, eight_bit)
    check_dkim(case, raw, eight_bit)
    m = BytesParser(policy=policy.default).parsebytes(raw)
    if m.defects:
        fail(case, "defects %r" % m.defects)
    if m.get("MIME-Version", "").strip() != "1.0":
        fail(case, "MIME-Version")
    if "Bcc" in m:
        fail(case, "Bcc header written")
    subject = req.get("subject")
    if subject:
        got = str(m["Subject"])
        if got != subject:
            fail(case, "subject %r != %r" % (got, subject))
    for field, header in (("from", "From"), ("to", "To"), ("cc", "Cc"), ("reply_to", "Reply-To")):
        want = [split_mailbox(s) for s in as_list(req.get(field))]
        want = [(n, idna_addr(a)) for n, a in want]
        got = [(a.display_name, a.addr_spec) for a in (m[header].addresses if m[header] else ())]
        if got != want:
            fail(case, "%s %r != %r" % (header, got, want))
    texts, htmls, files = [], [], []
    for part in m.walk():
        if part.is_multipart():
            continue
        if part.defects:
            fail(case, "part defects %r" % part.defects)
        if part.get_content_disposition() in ("attachment", "inline"):
            files.append((part.get_filename(), part.get_payload(decode=True), part.get("Content-ID")))
        elif part.get_content_type() == "text/html":
            htmls.append(part.get_content())
        else:
            texts.append(part.get_content())
    want_text = [norm(req["text"])] if req.get("text") is not None else []
    if req.get("text") is None and req.get("html") is None and not req.get("attachments"):
        want_text = [""]
    if [norm(t) for t in texts] != want_text:
        fail(case, "text %r != %r" % ([t[:80] for t in texts], [t[:80] for t in want_text]))
    want_html = [norm(req["html"])] if req.get("html") is not None else []
    if [norm(h) for h in htmls] != want_html:
        fail(case, "html differs")
    atts = req.get("attachments", [])
    if len(files) != len(atts):
        fail(case, "%d files, want %d" % (len(files), len(atts)))
    for a in atts:
        data = base64.b64decode(a["content_base64"])
        cid = a.get("content_id")
        cid = "<%s>" % cid if cid else None
        match = [f for f in files if f[0] == a["filename"] and (cid is None or f[2] == cid)]
        if not match:
            fail(case, "file %r not found in %r" % (a["filename"], [f[0] for f in files]))
        elif match[0][1] != data:
            fail(case, "bytes of %r differ (%d vs %d)" % (a["filename"], len(match[0][1] or b""), len(data)))


def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return RECORDS.get(name.rstrip(".").lower())


def check_dkim(case, raw, eight_bit):
    global SIGNED
    if not raw.startswith(b"DKIM-Signature: "):
        fail(case, "not signed")
        return
    try:
        if not dkim.verify(raw, dnsfunc=dnsfunc):
            fail(case, "dkimpy: the signature does not verify")
            return
    except Exception as e:
        fail(case, "dkimpy: %s: %s" % (type(e).__name__, e))
        return
    body_at = raw.index(b"\r\n\r\n") + 4
    if body_at < len(raw) - 2:
        altered = bytearray(raw)
        altered[body_at] ^= 0x20 if altered[body_at] != 0x2E else 0x01
        if dkim.verify(bytes(altered), dnsfunc=dnsfunc):
            fail(case, "dkimpy: a body byte changed and the signature still verifies")
    SIGNED += 1
    if SIGNED_DIR:
        name = case + ("-8bit" if eight_bit and not case.endswith("-8bit") else "")
        with open(os.path.join(SIGNED_DIR, name + ".eml"), "wb") as f:
            f.write(raw)


def setup_dkim(workdir):
    """Keys for the battery's two sender domains, one per algorithm, in a scratch store."""
    DKIM_ENV["HERALD_DATABASE_URL"] = "sqlite://" + os.path.join(workdir, "dkim.db")
    DKIM_ENV.pop("HERALD_SECRET_KEY", None)
    for domain, selector, algorithm in (("shop.example", "py-ed", "ed25519"), ("example.com", "py-rsa", "rsa")):
        subprocess.run([HERALD, "dkim", "generate", domain, "--selector", selector, "--algorithm", algorithm],
                       check=True, capture_output=True, env=DKIM_ENV)
    listed = subprocess.run([HERALD, "dkim", "list", "--json"], check=True, capture_output=True, env=DKIM_ENV)
    for line in listed.stdout.decode().splitlines():
        key = json.loads(line)
        RECORDS[key["dns_name"]] = key["dns_record"].encode()
    if SIGNED_DIR:
        with open(os.path.join(SIGNED_DIR, "records.json"), "w") as f:
            json.dump({name: value.decode() for name, value in RECORDS.items()}, f)


def b64(data):
    return base64.b64encode(data).decode()


def rand_bytes(n):
    return bytes(RNG.getrandbits(8) for _ in range(n))


SUBJECTS = [
    "Your order has shipped",
    "【Example Shop】您的订单 ORD-100000042 已发货 📦",
    "🎉 Party 🎉",
    "مرحبا بكم في متجرنا",
    "שלום עולם — הזמנה 42",
    "Grüße, naïve café",
    "订单 order 📦 " * 25 + "end",
    "The quick brown fox jumps over the lazy dog " * 7 + "end",
    "x" * 1500,
    "=?utf-8?q?not_encoded?=",
    "a",
]
NAMES = ["王小明", "José García", "Doe, Jane", 'Say "hi"', "محمد الأحمد", "🦀 Ferris", "O'Brien (Sales)", "Long Name " * 10 + "End"]
BODIES = [
    "x" * 5000,
    "中" * 5000,
    ("word " * 1000) + "\n" + "é" * 3000 + "\n",
    "one\rtwo\nthree\r\nfour\n\rfive",
    ".\n..\n.leading dot\nFrom the start\n--=_fake boundary\n",
    "trailing spaces   \ntrailing tab\t\nend ",
    "plain ascii\nsecond line\n",
]
FILENAMES = ["订单发票_Übersicht.pdf", "résumé.txt", "📎 file.bin", "ملف.dat", 'q"uote.bin', "很长的文件名" * 25 + ".bin", "plain.bin"]


def battery():
    base = {"from": "Example Shop 客服 <noreply@shop.example>", "to": "王小明 <xiaoming@example.com>", "subject": "Hello", "text": "Hello\n"}
    cases = []
    for i, s in enumerate(SUBJECTS):
        cases.append(("subject-%d" % i, dict(base, subject=s)))
    for i, n in enumerate(NAMES):
        cases.append(("name-%d" % i, dict(base, **{
            "from": '"%s" <sender@example.com>' % n.replace("\\", "\\\\").replace('"', '\\"'),
            "to": ['"%s" <a@example.com>' % n.replace('"', '\\"'), "b@example.com", "B <c@bücher.example>"],
            "cc": ['"%s" <cc@example.org>' % n.replace('"', '\\"')],
            "reply_to": "reply@example.net",
            "bcc": "hidden@example.com",
        })))
    for i, body in enumerate(BODIES):
        cases.append(("text-%d" % i, dict(base, text=body)))
        cases.append(("html-%d" % i, dict(base, text=None, html=body)))
    png, pdf = rand_bytes(10_000), rand_bytes(50_000)
    logo = {"filename": "logo.png", "content_base64": b64(png), "inline": True, "content_id": "logo@notify.example"}
    invoice = {"filename": "订单发票_Übersicht.pdf", "content_base64": b64(pdf)}
    html = '<p>Hi <img src="cid:logo@notify.example"></p>'
    structures = [
        {"text": "t"},
        {"html": "<b>h</b>"},
        {"text": "t", "html": "<b>h</b>"},
        {"html": html, "attachments": [logo]},
        {"text": "t", "html": html, "attachments": [logo]},
        {"text": "t", "html": html, "attachments": [logo, invoice]},
        {"text": "t", "attachments": [invoice]},
        {"attachments": [invoice]},
        {"text": "", "html": "", "attachments": [invoice]},
    ]
    for i, s in enumerate(structures):
        req = {k: v for k, v in base.items() if k not in ("text",)}
        req.update(s)
        cases.append(("structure-%d" % i, req))
    for i, name in enumerate(FILENAMES):
        for j, data in enumerate([b"", rand_bytes(1), rand_bytes(57), rand_bytes(20_000), b"ascii\nLF only\n.dot\nFrom x\n", b"crlf\r\ntext\r\n"]):
            if (i + j) % 2:
                continue
            cases.append(("file-%d-%d" % (i, j), dict(base, attachments=[{"filename": name, "content_type": "application/octet-stream", "content_base64": b64(data)}])))
    cases.append(("headers", dict(base, headers={"X-Campaign": "spring", "X-Unicode": "Grüße 北京 📦"})))
    return cases


def errors(workdir):
    bad = [
        ({"from": "a@b.example", "to": ["x@y.example", "nope"]}, "to[1]: missing '@'"),
        ({"from": "a@b.example", "to": "x@y.example", "attachments": [{"filename": "a.pdf", "content_base64": "!!"}]},
         "attachments[0].content_base64: invalid base64"),
        ({"from": "a@b.example", "to": "x@y.example", "subject": "a\r\nBcc: evil@x.example"}, "subject:"),
        ({"from": "a@b.example", "to": "x@y.example", "headers": {"Bcc": "evil@x.example"}}, "headers.Bcc"),
        ({"from": "a@b.example", "to": "x@y.example", "html": '<img src="cid:missing">'}, "html:"),
        # No body, or only empty ones: refused (issue 10), naming `text`; attachments alone are a body.
        ({"from": "a@b.example", "to": "x@y.example", "subject": "s"}, "text: the message has no body"),
        ({"from": "a@b.example", "to": "x@y.example", "text": ""}, "text: the message has no body"),
        ({"from": "a@b.example", "to": "x@y.example", "html": ""}, "text: the message has no body"),
    ]
    for i, (req, want) in enumerate(bad):
        path = os.path.join(workdir, "bad.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(req, f)
        p = subprocess.run([HERALD, "compose", path], capture_output=True)
        err = p.stderr.decode(errors="replace")
        if p.returncode == 0 or want not in err or p.stdout:
            fail("error-%d" % i, "want non-zero exit with %r, got %d %r" % (want, p.returncode, err))


def main():
    with tempfile.TemporaryDirectory() as workdir:
        setup_dkim(workdir)
        for case, req in battery():
            check(case, req, workdir)
            check(case + "-8bit", req, workdir, eight_bit=True)
        errors(workdir)
    for f in FAILURES[:40]:
        print("FAIL " + f)
    print("python email interop: %d messages checked, %d DKIM-verified by dkimpy, %d failures" % (CHECKED, SIGNED, len(FAILURES)))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
