"""Tests for the choice hatwist.tap.makeService makes: relay, supervisor or worker."""

from __future__ import annotations

import pytest
from twisted.python import usage

from hatwist.tap import Options, RelayService, makeService
from hatwist.workers import Supervisor, parse_worker


def options_for(tmp_path, text: str, *argv: str) -> Options:
    path = tmp_path / "hatwist.conf"
    path.write_text(f'spool_dir = "{tmp_path}/spool"\n' + text)
    options = Options()
    options.parseOptions(["--config", str(path), *argv])
    return options


def test_workers_1_is_the_single_relay_without_a_supervisor(tmp_path):
    service = makeService(options_for(tmp_path, "workers = 1\n"))
    assert type(service) is RelayService
    assert service.config.service.spool_dir == f"{tmp_path}/spool"
    assert service.config.service.limit_share == 1


def test_workers_2_is_a_supervisor_of_two(tmp_path):
    service = makeService(options_for(tmp_path, "workers = 2\n"))
    assert isinstance(service, Supervisor)
    assert [slot.worker for slot in service.slots] == [1, 2]
    argv = service.argv_for(2)
    assert "'--worker', '2/2'" in argv[-1] and str(tmp_path / "hatwist.conf") in argv[-1]


def test_a_worker_runs_the_relay_on_its_partition_with_its_share(tmp_path, monkeypatch):
    monkeypatch.setattr("hatwist.workers._main.stop_with_parent", lambda: None)
    service = makeService(options_for(
        tmp_path, "workers = 2\nmax_deliveries_in_flight = 10\n", "--worker", "2/2"))
    assert type(service) is RelayService
    settings = service.config.service
    assert settings.spool_dir == f"{tmp_path}/spool/worker-2"
    assert (settings.worker, settings.limit_share, settings.max_deliveries_in_flight) == (
        2, 2, 5)


@pytest.mark.parametrize("text", ["2", "0/2", "3/2", "a/b", "1/"])
def test_bad_worker_argument_is_a_usage_error(tmp_path, text):
    with pytest.raises(usage.UsageError, match="--worker"):
        options_for(tmp_path, "", "--worker", text)
    with pytest.raises(ValueError):
        parse_worker(text)
