"""Cached text forms of addresses and prefixes.

``str(IPv4Address)`` costs about a microsecond, and the home AAA writes the
same few dozen addresses (agents, gateways, prefixes) into every reply and
session row. A bounded cache turns that into a dictionary lookup.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

# Keyed by integers: IPv4Address.__hash__ itself formats a hex string, which
# would cost as much as the lookup saves.
_ADDRESSES: dict[int, str] = {}
_NETWORKS: dict[tuple[int, int], str] = {}
_LIMIT = 1 << 16


def text(value: IPv4Address | IPv4Network) -> str:
    """``str(value)``, cached."""
    if isinstance(value, IPv4Address):
        number = int(value)
        found = _ADDRESSES.get(number)
        if found is None:
            if len(_ADDRESSES) >= _LIMIT:
                _ADDRESSES.clear()
            found = _ADDRESSES[number] = str(value)
        return found
    key = (int(value.network_address), value.prefixlen)
    found = _NETWORKS.get(key)
    if found is None:
        if len(_NETWORKS) >= _LIMIT:
            _NETWORKS.clear()
        found = _NETWORKS[key] = str(value)
    return found
