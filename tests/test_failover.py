"""Two home AAA nodes on one PostgreSQL database, one killed with SIGKILL
while a client with both in a load-balance pool registers users through
them: every registration is answered (the client's retries carry the
requests the dead node held to the survivor), the dead node becomes a
zombie in the client's pool, and every session is renewable on the survivor
alone."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from aaa_vpn.model import Client, ClientRole, Gateway, GatewayMode, Service, User, VpnRecord
from aaa_vpn.net.radius_client import AsyncRadiusClient, RadiusUnavailable
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.store import init_store, open_store
from aaa_vpn.wire.profile import EspTransform, RequestType
from aaa_vpn.wire.radius_request import Accepted, AccessRequest, Rejected

from .radius_client import PRECEDING, served_port, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
FA, HA = "127.0.0.1", "127.0.0.2"
FA_SECRET = b"failover-fa-secret"
MN_AAA = Secret(b"failover-mn-aaa-secret")
USERS = 80


def _nai(n: int) -> str:
    return f"user{n:03d}@home.example"


def _registration(n: int, session: str | None = None, digest: bytes | None = None) -> AccessRequest:
    chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, MN_AAA)
    return AccessRequest(
        nai=_nai(n),
        chap_password=chap_password,
        chap_challenge=chap_challenge,
        nas_ip_address=IPv4Address(FA),
        request_type=RequestType.FA_REGISTRATION,
        care_of_address=IPv4Address(FA),
        home_agent=IPv4Address(HA),
        session_id=session,
        profile_digest=digest,
    )


def _provision(url: str, key: Path) -> None:
    store, _ = init_store(url, key)
    try:
        store.add_client(Client("fa", IPv4Network(f"{FA}/32"), Secret(FA_SECRET), ClientRole.FA))
        store.add_client(Client("ha", IPv4Network(f"{HA}/32"), Secret(b"failover-ha-secret"), ClientRole.HA))
        store.add_gateway(
            Gateway(
                "gw", IPv4Address("127.0.0.20"), GatewayMode.STATIC, (IPv4Network("203.0.113.0/24"),), Secret(b"g" * 16)
            )
        )
        store.add_service(Service("gold", esp_transform=EspTransform.AES_GCM_16_256, sa_lifetime=7200))
        with store.transaction():
            for n in range(USERS):
                store.add_user(
                    User(
                        _nai(n), IPv4Address(HA), MN_AAA, 256, Secret(bytes(range(16))), IPv4Address(f"10.9.0.{n + 1}")
                    )
                )
                store.add_vpn_record(VpnRecord(_nai(n), IPv4Network("203.0.113.0/24"), "gw", "gold"))
    finally:
        store.close()


class Node:
    """One ``aaa-vpn serve home`` in its own process group (its workers and
    listener with it), so that SIGKILL takes the whole node down at once."""

    def __init__(self, url: str, key: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aaa_vpn.cli",
                    "--db",
                    url,
                    "--key-file",
                    str(key),
                    "serve",
                    "home",
                    "--listen",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--workers",
                    "1",
                ],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.address = ("127.0.0.1", served_port(self.process, log))
        wait_until_serving(self.address, FA_SECRET)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # our child's own group: the node and its children
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def nodes(pg_url: str, tmp_path: Path) -> Iterator[list[Node]]:
    key = tmp_path / "vpn.key"
    _provision(pg_url, key)
    started: list[Node] = []
    try:
        for number in (1, 2):
            started.append(Node(pg_url, key, tmp_path / f"node{number}.log"))
        yield started
    finally:
        for node in started:
            node.stop()


def _pool(nodes: list[Node]) -> list[ServerConfig]:
    return [ServerConfig(*node.address, Secret(FA_SECRET), f"node{i + 1}") for i, node in enumerate(nodes)]


async def _register_all(
    nodes: list[Node],
) -> tuple[dict[int, Accepted | Rejected | Exception], list[dict[str, object]]]:
    """Registers every user through a load-balance pool of both nodes, 8 at a
    time; kills node 1 once a third of them were answered."""
    results: dict[int, Accepted | Rejected | Exception] = {}
    async with AsyncRadiusClient(
        _pool(nodes),
        local_address=(FA, 0),
        timeout=0.25,
        max_timeout=0.5,
        retries=4,
        pool_type="load-balance",
        nas_ip_address=IPv4Address(FA),
    ) as client:
        queue = list(range(USERS))
        killed = asyncio.Event()

        async def one(n: int) -> None:
            try:
                results[n] = await client.access_request(_registration(n))
            except RadiusUnavailable as exc:
                results[n] = exc
            if len(results) >= USERS // 3 and not killed.is_set():
                killed.set()
                nodes[0].kill()

        async def worker() -> None:
            while queue:
                await one(queue.pop(0))

        await asyncio.gather(*(worker() for _ in range(8)))
        return results, client.client.pool_status(asyncio.get_running_loop().time())


async def _renew_on(node: Node, accepted: dict[int, Accepted]) -> dict[int, Accepted | Rejected | Exception]:
    results: dict[int, Accepted | Rejected | Exception] = {}
    async with AsyncRadiusClient(_pool([node]), local_address=(FA, 0), timeout=0.25, retries=4) as client:
        for n, answer in accepted.items():
            assert answer.profile is not None
            request = _registration(n, answer.profile.session_id, answer.profile.digest)
            try:
                results[n] = await client.access_request(request)
            except RadiusUnavailable as exc:
                results[n] = exc
    return results


def test_a_node_killed_under_load_loses_no_registration_and_its_sessions_renew_on_the_survivor(
    nodes: list[Node], pg_url: str, tmp_path: Path
) -> None:
    url, key = pg_url, tmp_path / "vpn.key"
    results, pool = asyncio.run(_register_all(nodes))
    assert nodes[0].process.returncode == -signal.SIGKILL
    failed = {n: r for n, r in results.items() if not isinstance(r, Accepted)}
    assert not failed, f"{len(failed)} registrations not accepted: {list(failed.items())[:3]}"
    assert len(results) == USERS
    by_name = {str(entry["name"]): entry for entry in pool}
    # Both nodes carried registrations; node 1 let requests time out and is no longer live.
    assert int(by_name["node1"].get("accepts", 0)) >= USERS // 6, pool
    assert int(by_name["node2"].get("accepts", 0)) >= USERS // 3, pool
    assert by_name["node1"]["state"] in ("zombie", "dead") and int(by_name["node1"].get("timeouts", 0)) >= 1, pool
    assert by_name["node2"]["state"] == "alive", pool
    # Every session, whichever node made it, is renewable on the survivor: it
    # confirms the view the FA names (same session, same epoch, no new key).
    accepted = {n: r for n, r in results.items() if isinstance(r, Accepted)}
    renewals = asyncio.run(_renew_on(nodes[1], accepted))
    for n, answer in renewals.items():
        assert isinstance(answer, Accepted), (n, answer, nodes[1].log.read_text()[-2000:])
        first = accepted[n].profile
        assert first is not None
        assert answer.confirmation is not None, (n, answer)
        assert (answer.confirmation.session_id, answer.confirmation.epoch) == (first.session_id, first.epoch)
    # A request node 1 held when it died was carried to node 2 with the same
    # attributes: still one session per user in the database.
    store = open_store(url, key)
    try:
        for n in range(USERS):
            assert [s.session_id for s in store.find_sessions(_nai(n))] == [accepted[n].profile.session_id]  # type: ignore[union-attr]
    finally:
        store.close()
