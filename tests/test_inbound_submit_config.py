"""The submitter keys (listen_tls*, auth_users_file, allowed_submitters) as the config
loader checks them and ``hatwist check-config`` shows the effective policy."""

from __future__ import annotations

import json

import pytest

from hatwist.cli import main
from hatwist.config import ConfigError, parse_config
from hatwist.config.values import ListenTLSMode

TLS = "listen_tls_cert = /etc/hatwist/cert.pem\nlisten_tls_key = /etc/hatwist/key.pem\n"


@pytest.mark.parametrize("text, message", [
    ("listen_tls_cert = /c\n", "1:19: listen_tls_cert needs listen_tls_key"),
    ("listen_tls_key = /k\n", "1:18: listen_tls_key is set without listen_tls_cert"),
    ("listen_tls = required\n", "1:14: listen_tls needs listen_tls_cert"),
    ("auth_users_file = /u\n", "1:19: auth_users_file needs listen_tls_cert and "
     "listen_tls_key: AUTH is offered only over TLS"),
    (TLS + "listen_tls = sometimes\n", "3:14: listen_tls: expected one of optional | required"),
    ("allowed_submitters = 10.0.0.0/8\n", "'allowed_submitters' is not allowed in the top "
     "level; it is only allowed in binding and binding_group scopes"),
    ("binding b { allowed_submitters = 10.0.0.0/8 bob }\n", "'bob' is neither a network"),
])
def test_inconsistent_submitter_settings_name_the_line(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert message in str(caught.value)


def test_tls_is_optional_once_a_certificate_is_set_and_a_group_policy_is_inherited():
    config = parse_config(TLS + "binding_group g {\n  allowed_submitters = 10.0.0.0/8 user:al\n"
                          "  binding b { }\n}\nbinding c { }\n")
    assert config.service.inbound_tls is ListenTLSMode.OPTIONAL
    assert str(config.binding("b").base_settings.allowed_submitters) == "10.0.0.0/8 user:al"
    assert config.binding("c").base_settings.allowed_submitters is None
    assert parse_config("").service.inbound_tls is None


def test_check_config_shows_who_may_submit_through_which_binding(tmp_path, capsys):
    path = tmp_path / "hatwist.conf"
    path.write_text(TLS + "listen_tls = required\nauth_users_file = /etc/hatwist/users\n"
                    'relay_from = "10.1.0.0/16"\n'
                    "binding blue {\n  allowed_submitters = 192.0.2.0/24 user:alice\n}\n")
    assert main(["check-config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "  STARTTLS         required\n" in text
    assert "  AUTH             PLAIN LOGIN over TLS, users from /etc/hatwist/users\n" in text
    assert ("  binding blue     only 192.0.2.0/24, user alice (and only if allowed to "
            "relay)\n") in text
    assert ("  binding default  any client allowed to relay: clients in relay_from "
            "(10.1.0.0/16) and logged-in users\n") in text

    assert main(["check-config", "--json", str(path)]) == 0
    submitters = json.loads(capsys.readouterr().out)["submitters"]
    assert submitters["starttls"] == "required"
    assert submitters["bindings"]["blue"].startswith("only 192.0.2.0/24, user alice")


def test_an_unusable_users_file_or_certificate_stops_the_relay_with_one_line(tmp_path):
    from twisted.internet import reactor

    from hatwist.tap import RelayService, StartupError
    from tests.rig.certs import shared_ca

    cert = shared_ca().issue("relay.test")
    (tmp_path / "c.pem").write_bytes(cert.cert_pem)
    (tmp_path / "k.pem").write_bytes(cert.key_pem)
    (tmp_path / "users").write_text("alice:$6$salt$hash\n")
    text = (f'listen_tls_cert = "{tmp_path}/c.pem"\nlisten_tls_key = "{tmp_path}/k.pem"\n'
            f'auth_users_file = "{tmp_path}/users"\nspool_dir = "{tmp_path}/spool"\n')
    with pytest.raises(StartupError, match=rf"\A{tmp_path}/users:1: the SHA-512-crypt hash "
                                           "of 'alice' is malformed"):
        RelayService(parse_config(text), reactor=reactor)
    (tmp_path / "k.pem").write_bytes(shared_ca().issue("other.test").key_pem)
    with pytest.raises(StartupError, match="does not match listen_tls_cert"):
        RelayService(parse_config(text), reactor=reactor)
