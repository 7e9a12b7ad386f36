"""hatwist: an outbound SMTP relay that sends mail through an HAProxy PROXY-protocol hop."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hatwist",
    version="0.1.0",
    description=(
        "Outbound SMTP relay that picks each message's source IP through an "
        "HAProxy PROXY protocol v2 hop"
    ),
    long_description=(Path(__file__).parent / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    # twisted/plugins/ is a namespace directory (no __init__.py): it is listed
    # explicitly so that a plain ``pip install .`` drops the plugin module into
    # site-packages/twisted/plugins/, where twistd and clientFromString look.
    packages=[*find_packages(include=["hatwist", "hatwist.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["hatwist_plugins.py"]},
    install_requires=[
        "twisted[tls]==26.10.0",  # brings service-identity and pyOpenSSL
        "attrs>=23.1",
        "zope.interface>=6.0",
        "prometheus-client==0.26.0",  # /metrics
        "cryptography>=42",  # the demo lab's certificates (already a pyOpenSSL dependency)
        "redis==6.4.0",  # redis_url: limits shared through Redis (hatwist/shared)
        "bcrypt==5.0.0",  # SMTP AUTH: the users file's bcrypt hashes (maintained)
        # SMTP AUTH: SHA-512-crypt ($6$) hashes. The maintained fork of passlib (import name
        # passlib); a pure-Python wheel, no compiler or libcrypt headers (crypt-r needs both).
        "libpass==1.9.4",
    ],
    extras_require={
        "test": [
            "pytest==9.0.3",
            "pytest-twisted==1.14.3",
            "hypothesis==6.155.2",
            "ruff==0.17.5",
            "docutils==0.23",  # README and docs render cleanly (tests/test_docs.py)
        ],
    },
    entry_points={"console_scripts": ["hatwist = hatwist.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email :: Mail Transport Agents",
    ],
)
