#!/usr/bin/env python3
"""Turn one bench/compare.sh run into a table (stdout) and JSON (a file).

    compare_report.py META_TSV RESULTS_TSV OUT_JSON

RESULTS_TSV has one line per server, workload and round: server, workload, req/s, MB/s, p50
ms, p99 ms, peak RSS KiB, errors, note, load average, round (1 if absent). Ratios compare EFS
(cache on and off) with nginx and with the faster of the two rclone servers, on the
workload's main figure (MB/s for the large transfers, req/s otherwise), round by round; with
several rounds the table shows the medians (figures, and the per-round ratios) and the
issue's targets are checked on the median ratio.
"""

import json
import sys

# workload -> (main figure, label)
MAIN = {
    "get_4k": ("req_s", "GET 4 KiB, 16 clients"),
    "get_1m": ("mb_s", "GET 1 MiB, 16 clients"),
    "get_64m": ("mb_s", "GET 64 MiB, one stream"),
    "put_4k": ("req_s", "PUT 4 KiB new names, 16 clients"),
    "put_64m": ("mb_s", "PUT 64 MiB, one stream"),
    "put_big": ("mb_s", "PUT big file, one stream"),
    "get_big": ("mb_s", "GET big file, one stream"),
    # Not a server's figure: the disk's own fsynced write rate (random bytes), probed just
    # before each server's large PUTs (they depend on what the disk is doing then).
    "disk": ("mb_s", "disk: dd 256 MiB new file + fdatasync, before the PUTs"),
    "disk_inplace": ("mb_s", "disk: dd 256 MiB over the same file + fdatasync"),
}
ORDER = ["get_4k", "get_1m", "get_64m", "get_big", "put_4k", "put_64m", "put_big", "disk", "disk_inplace"]
# (workload, efs server, minimum ratio to nginx) from issue 5.
NGINX_TARGETS = [
    ("get_4k", "efs", 0.8), ("get_4k", "efs-nocache", 0.5),
    ("get_1m", "efs", 0.8), ("get_1m", "efs-nocache", 0.8),
    ("get_64m", "efs", 0.9), ("get_64m", "efs-nocache", 0.9),
    ("get_big", "efs", 0.9), ("get_big", "efs-nocache", 0.9),
    ("put_64m", "efs", 1.0), ("put_64m", "efs-nocache", 1.0),
    ("put_big", "efs", 1.0), ("put_big", "efs-nocache", 1.0),
    ("put_4k", "efs", 1.0), ("put_4k", "efs-nocache", 1.0),
]
RCLONE_MIN = 3.0
RSS_MAX_KIB = 100 * 1024  # during the big transfers, cache off


def median(values):
    """The median of the values that are not None (None if there are none)."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def rounded(v, d):
    return None if v is None else round(v, d)


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def main():
    meta_path, res_path, out_path = sys.argv[1:4]
    meta = {}
    for line in open(meta_path):
        k, _, v = line.rstrip("\n").partition("\t")
        meta[k] = v
    raw = []
    for line in open(res_path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 10:
            continue
        raw.append({
            "server": f[0], "workload": f[1], "req_s": num(f[2]), "mb_s": num(f[3]),
            "p50_ms": num(f[4]), "p99_ms": num(f[5]), "peak_rss_mib": round(int(f[6]) / 1024, 1),
            "errors": int(f[7]), "note": f[8], "load1": num(f[9]),
            "round": int(f[10]) if len(f) > 10 and f[10] else 1,
        })
    rounds = sorted({r["round"] for r in raw})

    # One row per server and workload: each figure's median over the rounds without errors
    # (over all rounds if every one had some), p99 and the peak RSS the highest, the errors'
    # sum.
    rows = []
    for r in raw:
        if any(x["server"] == r["server"] and x["workload"] == r["workload"] for x in rows):
            continue
        same = [x for x in raw if x["server"] == r["server"] and x["workload"] == r["workload"]]
        clean = [x for x in same if x["errors"] == 0] or same
        row = dict(same[0])
        del row["round"]
        for k in ("req_s", "mb_s", "p50_ms", "load1"):
            row[k] = median([x[k] for x in clean])
        row["p99_ms"] = max((x["p99_ms"] for x in clean if x["p99_ms"] is not None), default=None)
        row["peak_rss_mib"] = max(x["peak_rss_mib"] for x in same)
        row["errors"] = sum(x["errors"] for x in same)
        row["rounds"] = len(same)
        rows.append(row)
    by = {(r["server"], r["workload"]): r for r in rows}
    by_round = {(r["server"], r["workload"], r["round"]): r for r in raw}
    workloads = [w for w in ORDER if any(r["workload"] == w for r in rows)]
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])

    def main_fig(w):
        return MAIN.get(w, ("req_s", ""))[0]

    def fig(server, w, rnd):
        r = by_round.get((server, w, rnd))
        return r[main_fig(w)] if r and r["errors"] == 0 else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    # Ratios are taken within each round (each workload runs on every server back to back,
    # so the peer was measured within about half a minute), then their median is the result.
    for r in rows:
        w = r["workload"]
        r["vs_nginx"] = r["vs_rclone"] = None
        r["vs_nginx_rounds"] = r["vs_rclone_rounds"] = []
        if w.startswith("disk") or not r["server"].startswith("efs"):
            continue
        vn, vr = [], []
        for rnd in rounds:
            mine = fig(r["server"], w, rnd)
            vn.append(ratio(mine, fig("nginx", w, rnd)))
            peers = [p for p in (fig(s, w, rnd) for s in ("rclone-webdav", "rclone-s3")) if p is not None]
            vr.append(ratio(mine, max(peers) if peers else None))
        r["vs_nginx_rounds"] = [None if v is None else round(v, 2) for v in vn]
        r["vs_rclone_rounds"] = [None if v is None else round(v, 2) for v in vr]
        r["vs_nginx"] = rounded(median(vn), 2)
        r["vs_rclone"] = rounded(median(vr), 2)

    targets = []
    for w, s, m in NGINX_TARGETS:
        r = by.get((s, w))
        if r is not None and r["vs_nginx"] is not None:
            targets.append({"target": f"{w} {s} >= {m}x nginx", "value": r["vs_nginx"], "met": r["vs_nginx"] >= m,
                            "rounds": r["vs_nginx_rounds"]})
    for r in rows:
        if r["server"].startswith("efs") and r["vs_rclone"] is not None:
            targets.append({"target": f"{r['workload']} {r['server']} >= {RCLONE_MIN}x faster rclone",
                            "value": r["vs_rclone"], "met": r["vs_rclone"] >= RCLONE_MIN,
                            "rounds": r["vs_rclone_rounds"]})
    for w in ("put_big", "get_big"):
        r = by.get(("efs-nocache", w))
        if r is not None:
            targets.append({"target": f"{w} efs-nocache peak RSS <= 100 MiB", "value": r["peak_rss_mib"],
                            "met": r["peak_rss_mib"] * 1024 <= RSS_MAX_KIB, "rounds": None})

    out = {"meta": meta, "rounds": len(rounds), "results": rows, "per_round": raw, "targets": targets}
    with open(out_path, "w") as fh:
        json.dump(out, fh, indent=2)

    def f(v, d=0):
        return "-" if v is None else f"{v:,.{d}f}"

    def fr(v, per_round):
        """A ratio, with its range over the rounds when there are several, and how many
        rounds it rests on when some had errors."""
        got = [x for x in per_round if x is not None]
        if v is None or len(rounds) < 2 or not got:
            return f(v, 2)
        of = f", {len(got)} of {len(rounds)} rounds" if len(got) < len(rounds) else ""
        return f"{v:.2f} ({min(got):.2f}–{max(got):.2f}{of})"

    for k in ("date", "machine", "uptime", "versions", "params"):
        if k in meta:
            print(f"# {k}: {meta[k]}")
    print("# nginx and rclone do not fsync; EFS acknowledges a write only once it is fsynced,")
    print("# and every EFS request carries a real login token. Ratios: EFS / peer on the main figure")
    print("# (MB/s for 1 MiB and larger, req/s otherwise; listing: listings per second).")
    if len(rounds) > 1:
        print(f"# {len(rounds)} rounds: each figure is the median of its rounds without errors, p99 and")
        print("# peak RSS the highest, errors the sum; each ratio is the median of the rounds' own")
        print("# ratios (their range in brackets; a round with errors on either side has none), a")
        print("# round's ratio comparing figures taken within about half a minute (each workload")
        print("# runs on every server back to back).")
    print()
    print("| workload | server | req/s | MB/s | p50 ms | p99 ms | peak RSS MiB | errors | load | EFS/nginx | EFS/rclone |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    # The peers first, then EFS, whatever order the harness measured them in.
    rank = {s: i for i, s in enumerate(["nginx", "rclone-webdav", "rclone-s3", "efs", "efs-nocache"])}
    for w in workloads:
        for r in sorted(rows, key=lambda r: rank.get(r["server"], len(rank))):
            if r["workload"] != w:
                continue
            label = MAIN.get(w, ("", w.replace("_", " ")))[1] or w
            print(f"| {label} | {r['server']} | {f(r['req_s'])} | {f(r['mb_s'])} | {f(r['p50_ms'], 2)} | "
                  f"{f(r['p99_ms'], 2)} | {f(r['peak_rss_mib'], 1)} | {r['errors']} | {f(r['load1'], 2)} | "
                  f"{fr(r['vs_nginx'], r['vs_nginx_rounds'])} | {fr(r['vs_rclone'], r['vs_rclone_rounds'])} |")
    print()
    print("| target (issue 5) | value | met |" + (" rounds |" if len(rounds) > 1 else ""))
    print("|---|---:|---|" + ("---|" if len(rounds) > 1 else ""))
    for t in targets:
        extra = ""
        if len(rounds) > 1:
            extra = " " + (", ".join("-" if x is None else f"{x:.2f}" for x in t["rounds"]) if t["rounds"] else "-") + " |"
        print(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |{extra}")


if __name__ == "__main__":
    main()
