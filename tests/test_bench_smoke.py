"""bench/bench_relay.py runs end to end with a tiny N and prints its one table.

Not a benchmark: no rate is asserted, only that every row was measured (the reference
through both HAProxies, hatwist proxied and bypassed, delivery-only, accept-only with
nothing delivered, latency with the source check passing, queued) and that the script
cleaned up after itself. Needs root (``usesrc clientip``), HAProxy and Postfix's
smtp-source/smtp-sink.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.rig.needs import require_haproxy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["reference: smtp-source ->", "reference: smtp-source -d ->", "hatwist proxied:",
        "hatwist bypassed:", "delivery-only:", "accept-only:", "latency at", "queued: 30 ",
        "reference again: smtp-source ->"]


@pytest.fixture
def short_tmpdir():
    """A TMPDIR short enough for HAProxy's admin socket path (at most 97 bytes)."""
    path = tempfile.mkdtemp(prefix="hb-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_bench_relay_measures_every_row_with_a_tiny_n(short_tmpdir):
    require_haproxy()
    if os.geteuid() != 0:
        pytest.skip("bench_relay needs root (HAProxy's usesrc clientip)")
    if not all(os.access(f"/usr/sbin/{t}", os.X_OK) for t in ("smtp-source", "smtp-sink")):
        pytest.skip("bench_relay needs Postfix's smtp-source and smtp-sink")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=short_tmpdir)
    # Its own process group: if it overruns, Ctrl-C (SIGINT) lets it stop its HAProxies
    # and sinks as it promises, and only then is anything left killed.
    bench = subprocess.Popen(
        [sys.executable, "bench/bench_relay.py", "--messages", "40", "--sessions", "4",
         "--queued", "30", "--latency-seconds", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = bench.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGINT)
        try:
            stdout, stderr = bench.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bench.pid, signal.SIGKILL)
        pytest.fail(f"bench_relay.py overran 600 s:\n{stdout}\n{stderr}")
    done = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ROWS:
        [row] = [line for line in lines if line.startswith(name)]
        if not name.startswith("queued"):
            assert re.search(r"\s\d+\s+\d+\.\d\d\s", row), row  # a rate and its ratio
    [accept] = [line for line in lines if line.startswith("accept-only:")]
    assert "0 delivered (must be 0)" in accept
    [latency] = [line for line in lines if line.startswith("latency at")]
    assert "source check ok: proxied from 127.0.0.9, bypassed from 127.0.0.30" in latency
    # The workers rows split their CPU per message and end in the pairs' ratios.
    one, _ = [line for line in lines if line.startswith("hatwist proxied, workers = 1 ")]
    assert re.search(r"reactor \d+u\+\d+s, threads \d+u\+\d+s", one), one
    assert re.search(r"load generator us/msg \d+", one), one
    assert re.search(r"^  pair 1: workers = 2: \d+ / \d+ msg/s = \d+\.\d\dx$", done.stdout,
                     re.MULTILINE), done.stdout
    [queued] = [line for line in lines if line.startswith("queued:")]
    assert re.search(r"RSS/msg -?\d+ B", queued) and "recovered" in queued
    assert os.listdir(short_tmpdir) == []  # work directory removed
