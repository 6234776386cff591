#!/usr/bin/env python3
"""Tests of bench/compare_report.py (run by scripts/test.sh):

    python3 -m unittest discover -s bench -p 'test_*.py'

They feed it results files written the way bench/compare.sh writes them and check the
ratios, the medians over rounds, the targets and the table.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "compare_report.py")


def line(server, workload, req_s="-", mb_s="-", errors=0, rss_kib=30720, rnd=None):
    f = [server, workload, str(req_s), str(mb_s), "1.000", "2.000", str(rss_kib), str(errors), "note", "1.50"]
    if rnd is not None:
        f.append(str(rnd))
    return "\t".join(f) + "\n"


class Report(unittest.TestCase):
    def run_report(self, lines):
        with tempfile.TemporaryDirectory() as d:
            meta = os.path.join(d, "results.meta")
            res = os.path.join(d, "results.tsv")
            out = os.path.join(d, "results.json")
            with open(meta, "w") as fh:
                fh.write("date\t2026-12-02T00:00:00Z\nparams\ttest\n")
            with open(res, "w") as fh:
                fh.writelines(lines)
            table = subprocess.run([sys.executable, REPORT, meta, res, out], check=True,
                                   capture_output=True, text=True).stdout
            with open(out) as fh:
                return json.load(fh), table

    @staticmethod
    def row(data, server, workload):
        return next(r for r in data["results"] if r["server"] == server and r["workload"] == workload)

    @staticmethod
    def target(data, name):
        return next(t for t in data["targets"] if t["target"] == name)

    def test_one_round_ratios_against_nginx_and_the_faster_rclone(self):
        # Lines of the format before rounds existed (no round column) still read as round 1.
        data, table = self.run_report([
            line("nginx", "get_4k", req_s=100000),
            line("rclone-webdav", "get_4k", req_s=5000),
            line("rclone-s3", "get_4k", req_s=20000),
            line("efs", "get_4k", req_s=81000),
            line("efs-nocache", "get_4k", req_s=40000),
            line("nginx", "get_big", mb_s=1600),
            line("rclone-s3", "get_big", mb_s=700),
            line("efs", "get_big", mb_s=1500, errors=1),
            line("efs-nocache", "get_big", mb_s=1400, rss_kib=120 * 1024),
        ])
        self.assertEqual(data["rounds"], 1)
        efs = self.row(data, "efs", "get_4k")
        self.assertEqual(efs["vs_nginx"], 0.81)
        self.assertEqual(efs["vs_rclone"], 4.05)  # against rclone-s3, the faster
        self.assertTrue(self.target(data, "get_4k efs >= 0.8x nginx")["met"])
        self.assertFalse(self.target(data, "get_4k efs-nocache >= 0.5x nginx")["met"])
        # A figure with errors gives no ratio, so no target.
        self.assertIsNone(self.row(data, "efs", "get_big")["vs_nginx"])
        self.assertFalse(any(t["target"] == "get_big efs >= 0.9x nginx" for t in data["targets"]))
        self.assertFalse(self.target(data, "get_big efs-nocache peak RSS <= 100 MiB")["met"])
        # One round: plain ratios, no ranges.
        self.assertIn("| GET 4 KiB, 16 clients | efs | 81,000 |", table)
        self.assertIn("| 0.81 | 4.05 |", table)
        self.assertNotIn("rounds", table)

    def test_several_rounds_take_the_median_of_the_per_round_ratios(self):
        lines = []
        # nginx swings; EFS is 0.9x of it in rounds 1 and 3, and 0.5x in round 2.
        for rnd, ng, efs in ((1, 100000, 90000), (2, 160000, 80000), (3, 80000, 72000)):
            lines += [line("nginx", "get_4k", req_s=ng, rnd=rnd), line("efs", "get_4k", req_s=efs, rnd=rnd),
                      line("rclone-s3", "get_4k", req_s=10000, rnd=rnd)]
        data, table = self.run_report(lines)
        self.assertEqual(data["rounds"], 3)
        self.assertEqual(len(data["per_round"]), 9)
        efs = self.row(data, "efs", "get_4k")
        self.assertEqual(efs["vs_nginx_rounds"], [0.9, 0.5, 0.9])
        self.assertEqual(efs["vs_nginx"], 0.9)
        # The figures shown are medians over the rounds (not the ratio of those medians:
        # 80,000 / 100,000 would be 0.8).
        self.assertEqual(efs["req_s"], 80000)
        self.assertEqual(self.row(data, "nginx", "get_4k")["req_s"], 100000)
        t = self.target(data, "get_4k efs >= 0.8x nginx")
        self.assertTrue(t["met"])
        self.assertEqual(t["rounds"], [0.9, 0.5, 0.9])
        self.assertIn("0.90 (0.50–0.90)", table)
        self.assertIn("| get_4k efs >= 0.8x nginx | 0.9 | yes | 0.90, 0.50, 0.90 |", table)

    def test_a_round_with_errors_is_left_out_of_the_ratio_and_counted(self):
        lines = []
        for rnd, errors in ((1, 0), (2, 4), (3, 0), (4, 0)):
            lines += [line("nginx", "put_64m", mb_s=1000, errors=errors, rnd=rnd),
                      line("efs-nocache", "put_64m", mb_s=800 + rnd * 100, rss_kib=(20 + rnd) * 1024, rnd=rnd)]
        data, table = self.run_report(lines)
        efs = self.row(data, "efs-nocache", "put_64m")
        self.assertEqual(efs["vs_nginx_rounds"], [0.9, None, 1.1, 1.2])
        self.assertEqual(efs["vs_nginx"], 1.1)  # median of 0.9, 1.1, 1.2
        self.assertEqual(efs["peak_rss_mib"], 24.0)  # the highest of the rounds
        self.assertEqual(self.row(data, "nginx", "put_64m")["errors"], 4)  # summed
        self.assertEqual(efs["mb_s"], 1050)  # median of an even count: the mean of the middle two
        # nginx's figure is the median of its rounds without errors (1,000 each here).
        self.assertEqual(self.row(data, "nginx", "put_64m")["mb_s"], 1000)
        self.assertIn("| put_64m efs-nocache >= 1.0x nginx | 1.1 | yes | 0.90, -, 1.10, 1.20 |", table)
        self.assertIn("1.10 (0.90–1.20, 3 of 4 rounds)", table)

    def test_a_failed_rounds_figure_is_not_in_the_median_and_p99_is_the_highest(self):
        lines = []
        for rnd, mb_s, errors in ((1, 900, 0), (2, 0, 1), (3, 1000, 0)):
            f = line("efs", "get_64m", mb_s=mb_s, errors=errors, rnd=rnd).split("\t")
            f[5] = str(10 * rnd)  # p99 ms
            lines.append("\t".join(f))
        data, _ = self.run_report(lines)
        efs = self.row(data, "efs", "get_64m")
        self.assertEqual(efs["mb_s"], 950)  # 900 and 1,000; the failed round's 0 left out
        self.assertEqual(efs["p99_ms"], 30)
        self.assertEqual(efs["errors"], 1)


if __name__ == "__main__":
    unittest.main()
