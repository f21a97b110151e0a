"""RADIUS clients by source address: exact address or CIDR, the longest prefix
wins (what FreeRADIUS does with overlapping ``client`` blocks). Shared by the
home AAA and the foreign AAA."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, ip_address
from typing import Generic, Protocol, TypeVar


class _HasNetwork(Protocol):
    @property
    def network(self) -> IPv4Network: ...


C = TypeVar("C", bound=_HasNetwork)

_CACHE_LIMIT = 65536


class ClientTable(Generic[C]):
    """Clients looked up by address, longest prefix first; lookups are cached."""

    def __init__(self, clients: Iterable[C]) -> None:
        self._clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)
        self._cache: dict[str, C | None] = {}

    def lookup(self, address: str) -> C | None:
        """The client ``address`` belongs to, or None (unknown, or not IPv4)."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        found = None
        try:
            ip = ip_address(address)
        except ValueError:
            ip = None
        if ip is not None and ip.version == 4:
            found = next((c for c in self._clients if ip in c.network), None)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = found
        return found

    def __len__(self) -> int:
        return len(self._clients)
