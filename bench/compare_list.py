#!/usr/bin/env python3
"""List one directory on a server, page by page, on one keep-alive HTTPS connection.

    compare_list.py KIND URL CA_PEM HEADER REPS

KIND is how the server lists: nginx (autoindex JSON, one answer), webdav (PROPFIND Depth 1),
s3 (ListObjectsV2, pages of 1,000), efs (GET dir/, pages of 1,000 with next_cursor).
HEADER is an extra "Name: value" request header ("" for none). Lists REPS times and prints
"ENTRIES MEDIAN_SECONDS MAX_SECONDS". The same client does the same parsing work for every
server, so the times compare.
"""

import http.client
import json
import re
import ssl
import statistics
import sys
import time
import urllib.parse


def main():
    kind, url, ca, header, reps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)
    headers = {}
    if header:
        name, value = header.split(":", 1)
        headers[name.strip()] = value.strip()

    def get(method, path, extra=None):
        h = dict(headers)
        h.update(extra or {})
        conn.request(method, path, headers=h)
        r = conn.getresponse()
        body = r.read()
        if r.status not in (200, 207):
            raise SystemExit(f"{kind}: {method} {path}: HTTP {r.status}: {body[:200]!r}")
        return body

    def list_once():
        path = u.path
        if kind == "nginx":
            return len(json.loads(get("GET", path)))
        if kind == "webdav":
            body = get("PROPFIND", path, {"Depth": "1"}).decode()
            # One <response> for the directory itself, one per entry.
            return len(re.findall(r"<(?:\w+:)?response[ >]", body)) - 1
        if kind == "s3":
            bucket, _, prefix = path.lstrip("/").partition("/")
            n, token = 0, None
            while True:
                q = {"list-type": "2", "prefix": prefix, "delimiter": "/", "max-keys": "1000"}
                if token:
                    q["continuation-token"] = token
                body = get("GET", f"/{bucket}?{urllib.parse.urlencode(q)}").decode()
                n += len(re.findall(r"<Key>", body)) + len(re.findall(r"<CommonPrefixes>", body))
                m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
                if "<IsTruncated>true</IsTruncated>" not in body or not m:
                    return n
                token = m.group(1)
        if kind == "efs":
            n, cursor = 0, None
            while True:
                q = {"limit": "1000"}
                if cursor:
                    q["cursor"] = cursor
                page = json.loads(get("GET", f"{path}?{urllib.parse.urlencode(q)}"))
                n += len(page["entries"])
                cursor = page.get("next_cursor")
                if not cursor:
                    return n
        raise SystemExit(f"unknown kind {kind}")

    times, n = [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        n = list_once()
        times.append(time.perf_counter() - t0)
    print(n, f"{statistics.median(times):.4f}", f"{max(times):.4f}")


if __name__ == "__main__":
    main()
