"""Smoke test of bench/bench_spool.py with a tiny N: it runs and prints every row.
(Numbers are measured by the script, never asserted.)"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_spool_prints_a_row_per_layout_and_concurrency(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_spool.py"), "--dir", str(tmp_path),
         "--count", "4", "--size", "100", "--concurrency", "1,2", "--recover", "30"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()
            if line.startswith(("old ", "new "))]
    assert [(row[0], row[1]) for row in rows] == [("old", "1"), ("old", "2"), ("new", "1"),
                                                  ("new", "2")]
    assert os.listdir(tmp_path) == []  # it cleans up after itself
