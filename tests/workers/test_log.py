"""Tests for hatwist.workers._log: labelled lines, whole lines per write."""

from __future__ import annotations

import os

from hatwist.workers._log import ATOMIC_WRITE, LineAtomicWriter, label_line


def test_the_label_goes_first_inside_the_system_brackets():
    line = "2026-12-01T20:48:17+0000 [hatwist.tap.RelayService#info] hatwist starting\n"
    assert label_line(line, "worker-2") == (
        "2026-12-01T20:48:17+0000 [worker-2 hatwist.tap.RelayService#info] hatwist starting\n")
    assert label_line(None, "worker-2") is None


def test_batches_are_written_in_whole_lines_of_at_most_one_atomic_write(monkeypatch):
    read, write = os.pipe()
    writes = []
    real_write = os.write

    def recording(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)

    lines = [f"line {n} ".ljust(100, "x") + "\n" for n in range(200)]  # 20,000 bytes
    monkeypatch.setattr(os, "write", recording)
    LineAtomicWriter(write).write("".join(lines))
    monkeypatch.undo()
    os.close(write)
    with os.fdopen(read, "rb") as f:
        assert f.read().decode() == "".join(lines)
    assert len(writes) >= 5
    assert all(len(w) <= ATOMIC_WRITE and w.endswith(b"\n") for w in writes)
