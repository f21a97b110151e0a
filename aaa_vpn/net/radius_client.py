"""The asyncio driver of the sans-IO RADIUS client (:mod:`aaa_vpn.roles.radius_client`).

One UDP socket (``loop.create_datagram_endpoint``) bound to ``local_address``
-- the agent's own address, which is how the home AAA tells its clients apart
-- carries every request and Status-Server probe to every server; one
``loop.call_at`` timer follows :meth:`RadiusClient.get_timer`. The loop's
monotonic clock is ``now``. All rules (retransmission, failover, probing,
verification) live in the sans-IO client; this module only moves datagrams,
time and results.

``await client.access_request(info)`` returns
:class:`~aaa_vpn.wire.radius_request.Accepted` or
:class:`~aaa_vpn.wire.radius_request.Rejected`, and raises
:class:`RadiusUnavailable` when no server gave a usable answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from ipaddress import IPv4Address
from types import TracebackType
from typing import Any

from aaa_vpn.roles.radius_client import (
    DEFAULT_DEAD_TIME,
    DEFAULT_MAX_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_STATUS_INTERVAL,
    DEFAULT_TIMEOUT,
    DEFAULT_ZOMBIE_PERIOD,
    RadiusClient,
    RequestAccepted,
    RequestFailed,
    RequestRejected,
    ServerConfig,
    ServerDown,
    ServerUp,
    ServerZombie,
)
from aaa_vpn.wire.radius_request import Accepted, AccessRequest, Rejected

log = logging.getLogger("aaa_vpn.radius_client")


class RadiusUnavailable(Exception):
    """No server gave a usable answer (every one timed out or is marked dead,
    or an authentic reply did not decode), or the client was closed."""

    def __init__(self, reason: str, servers: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        """What happened."""
        self.servers = servers
        """The servers the request was sent to, in order."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: AsyncRadiusClient) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors cannot be tied to a server on an unconnected socket: the
        # timeouts decide (rule 3 of the sans-IO client).
        self.owner.client.counters["socket_errors"] += 1


class AsyncRadiusClient:
    """A RADIUS client for one agent over asyncio; see the module docstring.

    Use as ``async with AsyncRadiusClient(...) as client`` or call
    :meth:`close` when done; the socket is opened by :meth:`start` or by the
    first request."""

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        *,
        local_address: tuple[str, int] = ("0.0.0.0", 0),
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_timeout: float = DEFAULT_MAX_TIMEOUT,
        dead_time: float = DEFAULT_DEAD_TIME,
        status_interval: float | None = DEFAULT_STATUS_INTERVAL,
        zombie_period: float = DEFAULT_ZOMBIE_PERIOD,
        pool_type: str = "fail-over",
        nas_ip_address: IPv4Address | None = None,
    ) -> None:
        self.client = RadiusClient(
            servers,
            timeout=timeout,
            retries=retries,
            max_timeout=max_timeout,
            dead_time=dead_time,
            status_interval=status_interval,
            zombie_period=zombie_period,
            pool_type=pool_type,
            nas_ip_address=nas_ip_address,
        )
        """The sans-IO client: its ``counters`` say what happened."""
        self.local_address = local_address
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._futures: dict[int, asyncio.Future[Accepted | Rejected]] = {}
        self._tags = itertools.count()
        self._closed = False

    async def start(self) -> None:
        """Open the socket (idempotent)."""
        if self._transport is not None:
            return
        if self._closed:
            raise RadiusUnavailable("the RADIUS client is closed")
        loop = asyncio.get_running_loop()
        transport, _protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=self.local_address
        )
        self._loop = loop
        self._transport = transport

    @property
    def bound_address(self) -> tuple[str, int]:
        """The socket's own (address, port); the client must be started."""
        if self._transport is None:
            raise RuntimeError("the RADIUS client is not started")
        name = self._transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1]))

    async def access_request(self, info: AccessRequest) -> Accepted | Rejected:
        """Send ``info`` and wait for the outcome.

        Raises :class:`RadiusUnavailable` if no server gave a usable answer,
        :class:`~aaa_vpn.wire.radius_request.RequestError` at once if the
        request cannot be encoded. Cancelling the caller abandons the result;
        the request itself runs its course."""
        await self.start()
        loop = self._loop
        assert loop is not None
        tag = next(self._tags)
        future: asyncio.Future[Accepted | Rejected] = loop.create_future()
        self.client.request(info, loop.time(), tag)
        self._futures[tag] = future
        self._service()
        try:
            return await future
        finally:
            self._futures.pop(tag, None)

    def close(self) -> None:
        """Close the socket; pending requests raise :class:`RadiusUnavailable`."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for future in self._futures.values():
            if not future.done():
                future.set_exception(RadiusUnavailable("the RADIUS client was closed"))
        self._futures.clear()

    async def __aenter__(self) -> AsyncRadiusClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------
    def _datagram(self, data: bytes, address: tuple[str, int]) -> None:
        if self._loop is None:
            return
        self.client.receive_datagram(data, address, self._loop.time())
        self._service()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._loop is None:
            return
        self.client.handle_timer(self._loop.time())
        self._service()

    def _service(self) -> None:
        """Send what is due, deliver events, re-arm the timer."""
        loop, transport = self._loop, self._transport
        if loop is None or transport is None:
            return
        for data, address in self.client.datagrams_to_send(loop.time()):
            transport.sendto(data, address)
        while (event := self.client.next_event()) is not None:
            if isinstance(event, RequestAccepted):
                self._resolve(event.tag, Accepted(event.profile, event.attributes, event.confirmation))
            elif isinstance(event, RequestRejected):
                self._resolve(event.tag, Rejected(event.reason, event.message))
            elif isinstance(event, RequestFailed):
                log.warning("radius request failed: %s", event.reason)
                self._reject(event.tag, RadiusUnavailable(event.reason, event.servers))
            elif isinstance(event, ServerZombie):
                log.warning("radius server %s timed out: a zombie, probed", event.server)
            elif isinstance(event, ServerDown):
                log.warning("radius server %s marked dead", event.server)
            elif isinstance(event, ServerUp):
                log.info("radius server %s in use again (%s)", event.server, event.reason)
        when = self.client.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = (None, None) if when is None else (loop.call_at(when, self._on_timer), when)

    def _resolve(self, tag: object, result: Accepted | Rejected) -> None:
        future = self._futures.get(tag) if isinstance(tag, int) else None
        if future is not None and not future.done():
            future.set_result(result)

    def _reject(self, tag: object, error: RadiusUnavailable) -> None:
        future = self._futures.get(tag) if isinstance(tag, int) else None
        if future is not None and not future.done():
            future.set_exception(error)


__all__ = ["AsyncRadiusClient", "RadiusUnavailable"]
