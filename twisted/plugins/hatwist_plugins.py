"""
hatwist's Twisted plugins. Kept tiny on purpose: an import error here is only logged by
the plugin system and surfaces much later as "Unknown endpoint type" or a missing twistd
sub-command. The service maker imports hatwist.tap only when twistd runs it.
"""

from twisted.application.service import ServiceMaker

from hatwist._parser import HAProxyClientParser

haproxyClientEndpoint = HAProxyClientParser()

hatwistRelay = ServiceMaker(
    "hatwist",
    "hatwist.tap",
    "Outbound SMTP relay through an HAProxy PROXY-protocol hop",
    "hatwist",
)
