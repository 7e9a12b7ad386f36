"""Tests for hatwist.workers._share and the ``workers`` / PROXY-inbound config keys."""

from __future__ import annotations

import ipaddress
import os

import pytest

from hatwist.cli import main
from hatwist.config import parse_config
from hatwist.config.values import Throttle
from hatwist.workers._share import (
    partition_dir,
    share_count,
    share_throttle,
    worker_config,
)


@pytest.mark.parametrize(("limit", "workers", "share"), [(10, 2, 5), (11, 2, 5), (1, 2, 1),
                                                          (100, 3, 33), (7, 1, 7)])
def test_count_limits_divide_down_and_never_below_one(limit, workers, share):
    assert share_count(limit, workers) == share


@pytest.mark.parametrize(("throttle", "workers", "share"), [
    (Throttle(10, 3600), 2, Throttle(5, 3600)),
    (Throttle(3, 60), 2, Throttle(1, 60)),
    (Throttle(1, 3600), 2, Throttle(1, 7200)),
    (Throttle(2, 10), 3, Throttle(1, 15)),
    (Throttle(10, 3600), 1, Throttle(10, 3600)),
    (None, 4, None),
])
def test_throttle_share_keeps_the_relay_under_the_configured_rate(throttle, workers, share):
    result = share_throttle(throttle, workers)
    assert result == share
    if throttle is not None:  # n workers at their share never start more than configured
        assert workers * result.messages / result.seconds <= throttle.messages / throttle.seconds


def test_workers_key_takes_auto_or_a_number():
    assert parse_config("workers = 3\n").service.workers == 3
    assert parse_config("workers = auto\n").service.workers == len(os.sched_getaffinity(0))
    assert parse_config("").service.workers == 1
    with pytest.raises(Exception, match="workers"):
        parse_config("workers = 0\n")
    with pytest.raises(Exception, match="auto or a whole number"):
        parse_config("workers = many\n")


def test_listen_proxy_keys_default_off_and_loopback():
    service = parse_config("").service
    assert service.listen_proxy_protocol is False
    assert service.listen_proxy_from == (ipaddress.ip_network("127.0.0.0/8"),
                                         ipaddress.ip_network("::1/128"))
    service = parse_config('listen_proxy_protocol = yes\nlisten_proxy_from = "10.1.0.0/16"\n'
                           ).service
    assert service.listen_proxy_protocol is True
    assert service.listen_proxy_from == (ipaddress.ip_network("10.1.0.0/16"),)


def test_worker_config_gets_its_partition_and_share():
    config = parse_config('spool_dir = "/var/spool/x"\nworkers = 2\n'
                          "max_inbound_connections = 9\nmax_deliveries_in_flight = 100\n")
    mine = worker_config(config, 2, 2)
    assert mine.service.spool_dir == partition_dir("/var/spool/x", 2) == "/var/spool/x/worker-2"
    assert mine.service.max_inbound_connections == 4
    assert mine.service.max_deliveries_in_flight == 50
    assert mine.service.max_inbound_connections_per_ip == 5
    assert mine.service.max_inbound_connections_unlisted == 2
    assert (mine.service.limit_share, mine.service.worker) == (2, 2)
    assert (config.service.limit_share, config.service.worker) == (1, 0)
    with pytest.raises(ValueError):
        worker_config(config, 3, 2)


def test_check_config_warns_that_limits_are_divided(tmp_path, capsys):
    path = tmp_path / "hatwist.conf"
    path.write_text("workers = 2\n")
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}:1: workers = 2" in err
    assert "divided among the 2 workers" in err and "max_connections" in err
    path.write_text("workers = 1\n")
    assert main(["check-config", str(path)]) == 0
    assert "divided" not in capsys.readouterr().err


def test_scheduler_rules_give_a_worker_its_share_of_the_queue_limits():
    from hatwist.scheduler._rules import Rules

    config = parse_config('workers = 2\nmax_connections = 10\n'
                          'outbound_throttle_messages = "1/60"\n')
    key = ("default", "example.com")
    alone = Rules(lambda: config, registry=None)
    assert alone.max_connections(key) == 10
    assert alone.throttle(key) == Throttle(1, 60)
    worker = Rules(lambda: worker_config(config, 1, 2), registry=None)
    assert worker.max_connections(key) == 5
    assert worker.throttle(key) == Throttle(1, 120)


def test_with_redis_url_the_queue_limits_are_shared_not_divided(tmp_path, capsys):
    config = parse_config('workers = 2\nredis_url = "redis://127.0.0.1:6379/0"\n'
                          "max_deliveries_in_flight = 10\n")
    mine = worker_config(config, 1, 2)
    assert mine.service.limit_share == 1  # Redis holds max_connections and throttles
    assert mine.service.max_deliveries_in_flight == 5  # this process's own bound still
    path = tmp_path / "hatwist.conf"
    path.write_text('workers = 2\nredis_url = "redis://127.0.0.1:6379/0"\n')
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "shared through redis_url" in err and "no shared limits" not in err


def test_each_worker_gets_its_own_control_socket():
    config = parse_config('spool_dir = "/var/spool/x"\nworkers = 2\n')
    assert worker_config(config, 2, 2).service.control_socket_path == (
        "/var/spool/x/worker-2/control.sock")
    config = parse_config('spool_dir = "/var/spool/x"\nworkers = 2\n'
                          'control_socket = "/run/hatwist/control.sock"\n')
    assert worker_config(config, 1, 2).service.control_socket_path == (
        "/run/hatwist/worker-1-control.sock")
