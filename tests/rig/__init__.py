"""Real parts for tests (tests: tests.rig.test_rig).

- :mod:`tests.rig.haproxy`: a real HAProxy 2.6 relay (``accept-proxy``, ``usesrc clientip``).
- :mod:`tests.rig.sink`: a recording SMTP server standing in for a remote MX.
- :mod:`tests.rig.dns`: an authoritative DNS server answering what the test put in.
- :mod:`tests.rig.netns`: throw-away network namespaces for IPv6 end to end.
- :mod:`tests.rig.certs`: a test CA and server certificates made at run time.
- :mod:`tests.rig.smtp`: a small SMTP client with a deadline, for tests that send mail.

``tests/conftest.py`` turns them into fixtures: ``reactor``, ``haproxy``, ``smtp_sink``,
``tls_smtp_sink``, ``dns_server``, ``netns``.
"""
