"""A private Postfix instance as a real submitting MTA (tests: tests.service.test_submit).

Never the system's Postfix: everything lives in one directory the test made, given with
``postfix -c DIR`` / ``sendmail -C DIR`` (its own config_directory, queue_directory and
data_directory), it listens nowhere (master.cf has no smtpd and no inet service at all;
inet_interfaces is loopback anyway), delivers nothing locally, and relays every message
to ``relayhost`` -- the hatwist listener under test -- with STARTTLS required
(``smtp_tls_security_level = encrypt``, verified against the test CA) and SASL
credentials from ``smtp_sasl_password_maps``. Its log goes to DIR/maillog.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
TIMEOUT = 30

_MASTER_CF = """\
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> bool:
    return os.path.exists(POSTFIX) and os.path.exists(SENDMAIL) and os.geteuid() == 0


class PrivatePostfix:
    """One private instance in ``directory``; :meth:`start`, :meth:`send`, :meth:`stop`."""

    def __init__(self, directory: Path, *, relay_port: int, ca_pem: bytes, user: str,
                 password: str) -> None:
        self.directory = directory
        self.config = directory / "etc"
        self.maillog = directory / "maillog"
        self.config.mkdir(parents=True)
        (directory / "data").mkdir()
        os.chmod(directory, 0o755)  # Postfix's daemons run as the postfix user
        shutil.chown(directory / "data", "postfix")
        (directory / "queue").mkdir()
        (self.config / "ca.pem").write_bytes(ca_pem)
        (self.config / "sasl_passwd").write_text(f"[127.0.0.1]:{relay_port} {user}:{password}\n")
        os.chmod(self.config / "sasl_passwd", 0o600)
        (self.config / "master.cf").write_text(_MASTER_CF)
        (self.config / "main.cf").write_text(self._main_cf(relay_port))

    def _main_cf(self, relay_port: int) -> str:
        d = self.directory
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {d / 'queue'}",
            f"data_directory = {d / 'data'}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = submitter.test",
            "mydomain = submitter.test",
            "myorigin = submitter.test",
            "mydestination =",
            "local_transport = error:local delivery is disabled",
            "alias_maps =",
            "alias_database =",
            f"relayhost = [127.0.0.1]:{relay_port}",
            "smtp_tls_security_level = encrypt",
            f"smtp_tls_CAfile = {self.config / 'ca.pem'}",
            "smtp_tls_loglevel = 1",
            "smtp_sasl_auth_enable = yes",
            f"smtp_sasl_password_maps = texthash:{self.config / 'sasl_passwd'}",
            "smtp_sasl_security_options = noanonymous",
            "smtp_sasl_tls_security_options = noanonymous",
            "smtputf8_enable = yes",
            "queue_run_delay = 1s",
            "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s",
            f"maillog_file_prefixes = {d}",
            f"maillog_file = {self.maillog}",
            "",
        ])

    def _postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", str(self.config), *args], capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)

    def start(self) -> None:
        """``postfix -c DIR start`` (blocking: run it in a thread)."""
        done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stdout}{done.stderr}{self.log()}")

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Inject one message with ``sendmail -C DIR`` (blocking)."""
        done = subprocess.run([SENDMAIL, "-C", str(self.config), "-f", sender, "--", recipient],
                              input=message, capture_output=True, timeout=TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"sendmail failed: {done.stdout!r}{done.stderr!r}")

    def log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.maillog.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """``postfix -c DIR stop``; then nothing of it is left running (blocking)."""
        self._postfix("stop")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
