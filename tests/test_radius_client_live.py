"""The asyncio RADIUS client against real ``aaa-vpn serve home`` processes on
loopback, provisioned through the CLI (tests/test_home_server.py's
``provision``): FA 127.0.0.1 (fa1), HA 127.0.0.2 (ha1).

Two server processes share one database (``one`` and ``two``); every client
is configured with a first server that is dead (a free port nobody listens
on) or has the wrong shared secret, so failover happens over real sockets.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.net.radius_client import AsyncRadiusClient, RadiusUnavailable
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import PathRole, RejectReason, RequestType
from aaa_vpn.wire.radius_request import Accepted, AccessRequest, Rejected

from .radius_client import PRECEDING, served_port, silent_server, wait_until_serving
from .test_home_server import HA_SECRET, MN_SECRET, NAI, SECRET, provision, start_server, stop

FA = IPv4Address("127.0.0.1")
HA = IPv4Address("127.0.0.2")
TIMEOUT = 0.3
RETRIES = 1


@dataclass
class Home:
    one: tuple[str, int]
    two: tuple[str, int]
    dead: tuple[str, int]
    logs: tuple[Path, Path]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    tmp = tmp_path_factory.mktemp("radius-client")
    db = tmp / "vpn.db"
    provision(db)
    logs = (tmp / "one.log", tmp / "two.log")
    processes = [start_server(db, 0, 1, logs[0]), start_server(db, 0, 1, logs[1])]
    dead = silent_server()
    try:
        one, two = (served_port(process, log) for process, log in zip(processes, logs, strict=True))
        for port in (one, two):
            wait_until_serving(("127.0.0.1", port), SECRET)
        yield Home(("127.0.0.1", one), ("127.0.0.1", two), ("127.0.0.1", dead.port), logs)
    finally:
        dead.close()
        codes = [stop(process) for process in processes]
        assert codes == [0, 0], f"servers exited with {codes}:\n{logs[0].read_text()}\n{logs[1].read_text()}"


def _config(address: tuple[str, int], secret: bytes, name: str) -> ServerConfig:
    return ServerConfig(address[0], address[1], Secret(secret), name)


def _proof(mn_secret: bytes = MN_SECRET, challenge: bytes = b"\x07live-ch") -> tuple[bytes, bytes]:
    return mn_aaa_chap_attributes(challenge, PRECEDING, Secret(mn_secret))


def fa_registration(nai: str = NAI, mn_secret: bytes = MN_SECRET) -> AccessRequest:
    chap_password, chap_challenge = _proof(mn_secret, os.urandom(8))
    return AccessRequest(
        nai,
        chap_password,
        chap_challenge,
        nas_ip_address=FA,
        request_type=RequestType.FA_REGISTRATION,
        care_of_address=FA,
        home_agent=HA,
    )


def _client(servers: list[ServerConfig], local: str) -> AsyncRadiusClient:
    return AsyncRadiusClient(
        servers, local_address=(local, 0), timeout=TIMEOUT, retries=RETRIES, status_interval=1.0, dead_time=30.0
    )


def test_fa_then_ha_register_over_a_dead_first_server(home: Home) -> None:
    async def scenario() -> tuple[Accepted | Rejected, Accepted | Rejected, AsyncRadiusClient]:
        proof = _proof()
        fa_info = AccessRequest(
            NAI,
            *proof,
            nas_ip_address=FA,
            request_type=RequestType.FA_REGISTRATION,
            care_of_address=FA,
            home_agent=HA,
        )
        ha_info = AccessRequest(
            NAI, *proof, nas_ip_address=HA, request_type=RequestType.HA_REGISTRATION, care_of_address=FA
        )
        async with _client([_config(home.dead, SECRET, "dead"), _config(home.one, SECRET, "one")], "127.0.0.1") as fa:
            started = time.monotonic()
            fa_result = await fa.access_request(fa_info)
            assert time.monotonic() - started >= TIMEOUT * (RETRIES + 1) * 0.9  # it did wait out the dead one
            assert fa.bound_address[0] == "127.0.0.1"
        ha_servers = [_config(home.dead, HA_SECRET, "dead"), _config(home.one, HA_SECRET, "one")]
        async with _client(ha_servers, "127.0.0.2") as ha:
            ha_result = await ha.access_request(ha_info)
        return fa_result, ha_result, fa

    fa_result, ha_result, fa = asyncio.run(scenario())
    assert isinstance(fa_result, Accepted), fa_result
    assert isinstance(ha_result, Accepted), ha_result
    assert fa.client.counters["failovers"] == 1 and fa.client.counters["sent"] == 2
    assert fa.client.counters["retransmissions"] == RETRIES
    fa_view, ha_view = fa_result.profile, ha_result.profile
    assert fa_view.care_of_address == FA and fa_view.session_root_key is None
    assert ha_view.session_id == fa_view.session_id and ha_view.session_root_key is not None
    at_fa = next(p for p in fa_view.paths if p.role is PathRole.FA_HA)
    at_ha = next(p for p in ha_view.paths if p.role is PathRole.FA_HA)
    assert (at_ha.local, at_ha.peer) == (at_fa.peer, at_fa.local) == (HA, FA)
    assert at_ha.key_in == at_fa.key_out and at_ha.key_out == at_fa.key_in
    assert at_ha.spi_in == at_fa.spi_out and at_ha.spi_out == at_fa.spi_in


def test_wrong_secret_gets_no_usable_reply_and_fails_over(home: Home) -> None:
    async def scenario() -> tuple[Accepted | Rejected, AsyncRadiusClient, float, AsyncRadiusClient]:
        servers = [_config(home.one, b"not-the-fa1-secret", "one"), _config(home.two, SECRET, "two")]
        async with _client(servers, "127.0.0.1") as client:
            result = await client.access_request(fa_registration())
        async with _client([_config(home.one, b"not-the-fa1-secret", "one")], "127.0.0.1") as alone:
            started = time.monotonic()
            with pytest.raises(RadiusUnavailable) as failed:
                await alone.access_request(fa_registration())
            elapsed = time.monotonic() - started
            assert failed.value.servers == ("one",) and "no reply from one" in str(failed.value)
            # its only server is marked dead, and still asked (a dead mark never refuses a request)
            with pytest.raises(RadiusUnavailable, match="no reply from one"):
                await alone.access_request(fa_registration())
            assert alone.client.counters["sent_to_dead"] == 1
        return result, client, elapsed, alone

    result, client, elapsed, alone = asyncio.run(scenario())
    assert isinstance(result, Accepted), result
    assert client.client.counters["failovers"] == 1
    # the server stays silent to a wrong secret (it cannot verify the request), so nothing was dropped here
    assert client.client.counters["dropped"] == 0
    assert TIMEOUT * (RETRIES + 1) * 0.9 <= elapsed < 5.0
    assert alone.client.counters["failed"] == 2
    assert "bad_message_authenticator" in home.logs[0].read_text()


def test_concurrent_requests_and_a_reject_share_one_socket(home: Home) -> None:
    async def scenario() -> tuple[Accepted | Rejected, ...]:
        async with _client([_config(home.one, SECRET, "one"), _config(home.two, SECRET, "two")], "127.0.0.1") as c:
            return tuple(
                await asyncio.gather(
                    c.access_request(fa_registration()),
                    c.access_request(fa_registration("mn2@home.example")),
                    c.access_request(fa_registration(mn_secret=b"wrong-mn-secret")),
                    c.access_request(fa_registration("nobody@home.example")),
                )
            )

    first, second, wrong, unknown = asyncio.run(scenario())
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert first.profile.home_address != second.profile.home_address
    assert wrong == Rejected(RejectReason.AUTHENTICATION_FAILED, "mobile node failed authentication")
    assert isinstance(unknown, Rejected) and unknown.reason is RejectReason.UNKNOWN_USER
