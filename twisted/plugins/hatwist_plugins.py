"""
hatwist's Twisted plugins. Kept tiny on purpose: an import error here is only logged by
the plugin system and surfaces much later as "Unknown endpoint type".
"""

from hatwist._parser import HAProxyClientParser

haproxyClientEndpoint = HAProxyClientParser()
