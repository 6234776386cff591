#!/usr/bin/env python3
"""Latency of HEAD (stat) or GET of random existing files, one keep-alive HTTPS connection.

    scale_latency.py METHOD URL CA_PEM TOKEN FILES DIRS SECONDS

Requests /records/dNNNN/fNNNNNNN.bin (file i lives in directory i % DIRS, as
crates/efs-core/examples/scale_gen.rs writes them) one after another for SECONDS and prints
"REQUESTS P50_MS P99_MS ERRORS". One connection and no pipelining: each figure is one
request's round trip (wrk cannot time HEAD: it waits for the announced body).
"""

import http.client
import random
import ssl
import sys
import time
import urllib.parse


def main():
    method, url, ca, token = sys.argv[1:5]
    files, dirs, secs = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=ca))
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(20261201)
    lat, errors = [], 0
    end = time.perf_counter() + secs
    while time.perf_counter() < end:
        i = rng.randrange(files)
        t0 = time.perf_counter()
        conn.request(method, f"/records/d{i % dirs:04d}/f{i:07d}.bin", headers=headers)
        r = conn.getresponse()
        r.read()
        lat.append(time.perf_counter() - t0)
        if r.status != 200:
            errors += 1
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(len(lat), f"{pick(0.50):.3f}", f"{pick(0.99):.3f}", errors)


if __name__ == "__main__":
    main()
