"""Real parts for tests: HAProxy, an SMTP sink, DNS, network namespaces (tests: tests.rig.test_rig).

The parts themselves ship in :mod:`hatwist.lab` (``hatwist demo`` runs them too); its
docstring is the API summary. ``tests.rig.haproxy``, ``.sink``, ``.dns``, ``.smtp`` and
``.certs`` re-export them so existing imports keep working. What stays here is test-only:

Fixtures (``tests/conftest.py``, all function-scoped, torn down even on failure):
``reactor``, ``haproxy`` (started, 127.0.0.1, free port), ``smtp_sink`` (127.0.0.20),
``tls_smtp_sink`` (same, STARTTLS as ``mx.test``), ``dns_server``, ``netns`` (skips with
the reason where namespaces are not permitted). Everything returns Deferreds: ``await``
them in ``@pytest_twisted.ensureDeferred`` tests.

Namespaces (:mod:`tests.rig.netns`)::

    ns = await NetNS.create(reactor, addresses=("fd00::9/128", "fd00::20/128"))
    result = await ns.run("python3", "-m", "tests.rig.netns_probe", ..., cwd=ROOT)
    HAProxy(reactor, netns=ns.name);  await ns.delete()

Also :mod:`tests.rig.needs` (``require_haproxy()``, ``require_netns()``: skip, or fail
in CI).
"""
