"""Cached text forms of addresses and prefixes.

``str(IPv4Address)`` costs about a microsecond, and the home AAA writes the
same few dozen addresses (agents, gateways, prefixes) into every reply and
session row. A bounded cache turns that into a dictionary lookup.
"""

from __future__ import annotations

import functools
from ipaddress import IPv4Address, IPv4Network


@functools.lru_cache(maxsize=1 << 16)
def text(value: IPv4Address | IPv4Network) -> str:
    """``str(value)``, cached."""
    return str(value)
