"""The mobile node's MSAs from home-generated nonces (RFC 3957, RFC 4004
section 9) at the agents: the FA turns the MN-FA key AAA gave it into the
MN-FA Key Generation Nonce Reply and MN-FA authentication of the reply it
relays, and keeps the key for the visitor.

The whole system runs in one process (tests/mobility.py). The FA's AAA
client is the real RADIUS one; what a Diameter AMA adds -- the MN-FA key,
roles/diameter_client.py ``mn_key`` -- is put into its accept event by a
wrapper, with a nonce the test chose, so that the key the test expects is
computed here with the standard library, never by the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest

from aaa_vpn.lab.topology import NAI
from aaa_vpn.roles.fa import ForeignAgent
from aaa_vpn.roles.radius_client import Event, RadiusClient, RequestAccepted
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import ExtensionType, KeyReplyExtension, decode_aaa_nonce
from aaa_vpn.wire.mip_auth import verify_authentication
from aaa_vpn.wire.profile import MnKey

from .mobility import FA1, GW_DYNAMIC, GW_STATIC, MN_AAA, MN_SOCKET, Network

NONCE = bytes(range(100, 116))
MN_FA_SPI = 0x3958


def rfc3957_key(nonce: bytes) -> bytes:
    """RFC 3957 section 5: HMAC-SHA1(AAA-key, nonce || NAI)."""
    return hmac.new(MN_AAA.value, nonce + NAI.encode(), hashlib.sha1).digest()


class WithMnFaKey:
    """The FA's AAA client, whose accepts carry an MN-FA key as a Diameter AMA's would."""

    def __init__(self, inner: RadiusClient) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def next_event(self) -> Event | None:
        event = self.inner.next_event()
        if isinstance(event, RequestAccepted) and event.profile is not None:
            key = MnKey(MN_FA_SPI, 2, 2, NONCE, Secret(rfc3957_key(NONCE)), event.profile.lifetime)
            return dataclasses.replace(event, mn_fa_key=key)
        return event


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    network.add_ha()
    network.add_fa("fa1", FA1)
    network.add_gw("gw-static", GW_STATIC)
    network.add_gw("gw-dynamic", GW_DYNAMIC)
    network.add_mn(request_keys=True, mn_fa_key_spi=MN_FA_SPI)
    yield network
    network.close()


def replies_to_the_node(net: Network) -> list[bytes]:
    seen: list[bytes] = []
    send = net.link.send

    def record(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        if destination[0] == MN_SOCKET and data[:1] == b"\x03":
            seen.append(data)
        send(source, destination, data)

    net.link.send = record  # type: ignore[method-assign]
    return seen


def test_fa_relays_the_mn_fa_key_reply_and_authenticates_with_the_new_key(net: Network) -> None:
    fa = net.nodes["fa1"].agent
    assert isinstance(fa, ForeignAgent)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    replies = replies_to_the_node(net)
    net.nodes["mn"].agent.register(net.fa_address(FA1), net.clock)  # type: ignore[attr-defined]
    net.settle()
    done = net.nodes["mn"].done()
    assert done and done[-1].code == 0, done
    accepted = [r for r in replies if mip.decode_registration_reply(r).accepted]
    assert accepted, "no accepted reply reached the node"
    reply = accepted[-1]
    decoded = mip.decode_registration_reply(reply)
    # RFC 3957 section 6.2: the MN-FA Key Generation Nonce Reply precedes the MN-FA authentication, which is last.
    kinds = [type(e).__name__ for e in decoded.extensions]
    assert kinds[-2:] == ["KeyReplyExtension", "AuthenticationExtension"], kinds
    key_reply = decoded.extensions[-2]
    assert isinstance(key_reply, KeyReplyExtension) and key_reply.type == ExtensionType.MN_FA_KEY_REPLY
    from_aaa = decode_aaa_nonce(key_reply)
    assert (from_aaa.aaa_spi, from_aaa.agent_spi, from_aaa.algorithm, from_aaa.nonce) == (2, MN_FA_SPI, 2, NONCE)
    # The key lives as long as AAA said (MIP-MSA-Lifetime: the session's), not just this registration.
    assert key_reply.lifetime == fa.visitors[NAI].profile.lifetime >= decoded.lifetime
    # The MN-FA authenticator verifies under the key the node derives from the nonce, and only under it.
    derived = Secret(rfc3957_key(from_aaa.nonce))
    assert verify_authentication(reply, ExtensionType.MN_FA_AUTH, derived, spi=MN_FA_SPI)
    assert not verify_authentication(reply, ExtensionType.MN_FA_AUTH, Secret(rfc3957_key(bytes(16))), spi=MN_FA_SPI)
    # The visitor keeps the key; it is in no repr.
    visitor = fa.visitors[NAI]
    assert visitor.mn_fa is not None and visitor.mn_fa.key == derived
    assert rfc3957_key(NONCE).hex() not in repr(visitor) and rfc3957_key(NONCE).hex() not in repr(visitor.mn_fa)
    assert fa.counters["mn_fa_keys_relayed"] >= 1


def test_the_visitor_key_survives_a_restart_of_the_fa(net: Network) -> None:
    fa = net.nodes["fa1"].agent
    assert isinstance(fa, ForeignAgent)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    net.nodes["mn"].agent.register(net.fa_address(FA1), net.clock)  # type: ignore[attr-defined]
    net.settle()
    state = fa.export_state()
    again = ForeignAgent(fa.config)
    again.restore_state(state, net.clock)
    restored = again.visitors[NAI].mn_fa
    assert restored is not None and restored == fa.visitors[NAI].mn_fa
    assert restored.key == Secret(rfc3957_key(NONCE))


def test_without_a_key_from_aaa_the_reply_is_as_before(net: Network) -> None:
    replies = replies_to_the_node(net)
    net.nodes["mn"].agent.register(net.fa_address(FA1), net.clock)  # type: ignore[attr-defined]
    net.settle()
    reply = mip.decode_registration_reply(replies[-1])
    assert reply.accepted
    assert not any(isinstance(e, KeyReplyExtension) for e in reply.extensions)
    assert not any(
        isinstance(e, mip.AuthenticationExtension) and e.type == ExtensionType.MN_FA_AUTH for e in reply.extensions
    )
    fa = net.nodes["fa1"].agent
    assert isinstance(fa, ForeignAgent) and fa.visitors[NAI].mn_fa is None
