"""The mobile node's MSAs from home-generated nonces (RFC 3957, RFC 4004
section 9) at the agents and the node: the FA turns the MN-FA key AAA gave
it into the MN-FA Key Generation Nonce Reply and MN-FA authentication of the
reply it relays, and keeps the key for the visitor; the HA does the same
with the MN-HA key before its MN-HA authenticator and keeps the MSA in the
binding; the node derives both keys from the nonces, and its next requests
are authenticated under the new MN-HA MSA. Every authenticator under such an
MSA is HMAC-SHA-1, the algorithm it names (20 octets); the provisioned MN-HA
and the FA-HA ones stay HMAC-MD5 (16).

The whole system runs in one process (tests/mobility.py). The agents' AAA
clients are the real RADIUS ones; what Diameter adds -- the MN-FA key of an
AMA, the MN-HA key of a HAR (roles/diameter_client.py ``mn_key``) -- is put
into their accept events by a wrapper, with nonces the test chose, so that
the keys the test expects are computed here with the standard library, never
by the code under test. That the home AAA's front end makes exactly these
keys and events is tests/test_diameter_home.py's and
tests/test_diameter_client.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.lab.topology import NAI
from aaa_vpn.roles.fa import ForeignAgent
from aaa_vpn.roles.ha import HomeAgent
from aaa_vpn.roles.mn import MobileNode
from aaa_vpn.roles.radius_client import Event, RadiusClient, RequestAccepted
from aaa_vpn.secret import Secret
from aaa_vpn.service.journal import decode_journal, encode_journal
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import ExtensionType, KeyGenAlgorithm, KeyReplyExtension, decode_aaa_nonce
from aaa_vpn.wire.mip_auth import append_authentication, find_authentication, verify_authentication
from aaa_vpn.wire.profile import MnKey

from .mobility import FA1, GW_DYNAMIC, GW_STATIC, HA, MN_AAA, MN_HA, MN_SOCKET, Network

NONCE = bytes(range(100, 116))
HA_NONCE = bytes(range(200, 216))
MN_FA_SPI = 0x3958
MN_HA_SPI = 0x3957
PROVISIONED_SPI = 256  # tests/mobility.py: the node's MN-HA SPI
SHA1 = KeyGenAlgorithm.HMAC_SHA1


def rfc3957_key(nonce: bytes) -> bytes:
    """RFC 3957 section 5: HMAC-SHA1(AAA-key, nonce || NAI)."""
    return hmac.new(MN_AAA.value, nonce + NAI.encode(), hashlib.sha1).digest()


def authenticator(message: bytes, extension_type: ExtensionType) -> tuple[int, bytes, bytes]:
    """(SPI, authenticator, what it covers) of ``extension_type`` in ``message``."""
    site = find_authentication(message, extension_type)
    assert site is not None, f"no extension {extension_type!r}"
    return site.extension.spi, site.extension.authenticator, site.covered


def hmac_sha1(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha1).digest()


class WithMnFaKey:
    """The FA's AAA client, whose accepts carry an MN-FA key as a Diameter AMA's would."""

    def __init__(self, inner: RadiusClient, algorithm: int = 2) -> None:
        self.inner = inner
        self.enabled = True
        self.algorithm = algorithm  # MIP-Algorithm-Type of the MSA

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def next_event(self) -> Event | None:
        event = self.inner.next_event()
        if self.enabled and isinstance(event, RequestAccepted) and event.profile is not None:
            key = MnKey(MN_FA_SPI, 2, self.algorithm, NONCE, Secret(rfc3957_key(NONCE)), event.profile.lifetime)
            return dataclasses.replace(event, mn_fa_key=key)
        return event


class WithMnHaKey(WithMnFaKey):
    """The HA's AAA client, whose accepts carry an MN-HA key as a HAR's view would."""

    def next_event(self) -> Event | None:
        event = self.inner.next_event()
        if self.enabled and isinstance(event, RequestAccepted) and event.profile is not None:
            key = MnKey(
                MN_HA_SPI, 2, self.algorithm, HA_NONCE, Secret(rfc3957_key(HA_NONCE)), event.profile.lifetime, 2
            )
            return dataclasses.replace(event, mn_ha_key=key)
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


def recorded(net: Network, keep: Callable[[str, str, bytes], bool]) -> list[bytes]:
    """Every datagram the link carries from now on for which ``keep(source
    address, destination address, data)`` holds, in order."""
    seen: list[bytes] = []
    send = net.link.send

    def record(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        if keep(source[0], destination[0], data):
            seen.append(data)
        send(source, destination, data)

    net.link.send = record  # type: ignore[method-assign]
    return seen


def replies_to_the_node(net: Network) -> list[bytes]:
    return recorded(net, lambda _source, destination, data: destination == MN_SOCKET and data[:1] == b"\x03")


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
    # RFC 4004 section 9.5: the FA SPI is the FA's own, allocated for this MSA (never reserved, never the node's).
    fa_spi = fa.visitors[NAI].mn_fa.agent_spi  # type: ignore[union-attr]
    assert fa_spi is not None and fa_spi >= 256 and fa_spi not in (MN_FA_SPI, fa.visitors[NAI].profile.fa_ha_spi)
    assert (from_aaa.aaa_spi, from_aaa.agent_spi, from_aaa.algorithm, from_aaa.nonce) == (2, fa_spi, 2, NONCE)
    # The key lives as long as AAA said (MIP-MSA-Lifetime: the session's), not just this registration.
    assert key_reply.lifetime == fa.visitors[NAI].profile.lifetime >= decoded.lifetime
    # The MN-FA authenticator is HMAC-SHA-1, the algorithm the MSA names: 20 octets (Length 24), under
    # the key the node derives from the nonce, and only under it; the HA's MN-HA one stays HMAC-MD5.
    spi, mn_fa_auth, covered = authenticator(reply, ExtensionType.MN_FA_AUTH)
    assert spi == MN_FA_SPI and len(mn_fa_auth) == 20 and reply[-26:-24] == bytes((33, 24))
    assert mn_fa_auth == hmac_sha1(rfc3957_key(from_aaa.nonce), covered)
    derived = Secret(rfc3957_key(from_aaa.nonce))
    assert verify_authentication(reply, ExtensionType.MN_FA_AUTH, derived, spi=MN_FA_SPI, algorithm=SHA1)
    assert not verify_authentication(reply, ExtensionType.MN_FA_AUTH, derived, spi=MN_FA_SPI)  # not HMAC-MD5
    other = Secret(rfc3957_key(bytes(16)))
    assert not verify_authentication(reply, ExtensionType.MN_FA_AUTH, other, spi=MN_FA_SPI, algorithm=SHA1)
    assert len(authenticator(reply, ExtensionType.MN_HA_AUTH)[1]) == 16
    assert verify_authentication(reply, ExtensionType.MN_HA_AUTH, MN_HA, spi=PROVISIONED_SPI)
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
    # Through the sealed state journal, as the service layer keeps it.
    credential = Secret(b"journal credential")
    sealed = encode_journal(fa.export_state(), "fa", IPv4Address(FA1), credential, net.clock)
    assert rfc3957_key(NONCE).hex().encode() not in sealed
    state = decode_journal(sealed, "fa", IPv4Address(FA1), credential)
    again = ForeignAgent(fa.config)
    again.restore_state(state, net.clock)
    restored = again.visitors[NAI].mn_fa
    assert restored is not None and restored == fa.visitors[NAI].mn_fa
    assert restored.key == Secret(rfc3957_key(NONCE))
    # Not yet confirmed by a request under it (rule 5a): that survives too.
    assert again.visitors[NAI].mn_fa_confirmed is fa.visitors[NAI].mn_fa_confirmed is False


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


def requests_to_the_ha(net: Network) -> list[bytes]:
    return recorded(net, lambda _source, destination, data: destination == HA and data[:1] == b"\x01")


def test_the_node_derives_the_keys_the_agents_hold_and_registers_with_the_new_mn_ha_key(net: Network) -> None:
    fa, ha, mn = (net.nodes[name].agent for name in ("fa1", "ha", "mn"))
    assert isinstance(fa, ForeignAgent) and isinstance(ha, HomeAgent) and isinstance(mn, MobileNode)
    fa.radius = fa_keys = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    ha.radius = ha_keys = WithMnHaKey(ha.radius)  # type: ignore[assignment]
    replies = replies_to_the_node(net)
    requests = requests_to_the_ha(net)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0

    # The HA's reply: the MN-HA Key Generation Nonce Reply before MN-HA authentication under the new key.
    reply = replies[-1]
    decoded = mip.decode_registration_reply(reply)
    ha_reply = next(e for e in decoded.extensions if isinstance(e, KeyReplyExtension))
    assert ha_reply.type == ExtensionType.MN_HA_KEY_REPLY
    nonce = decode_aaa_nonce(ha_reply)
    # RFC 4004 section 9.6: the HA SPI is the HA's own, allocated for this MSA; its reply names the node's
    # (section 9.4: the node allocated the HA-to-MN SPI).
    ha_spi = ha.bindings[NAI].mn_ha.agent_spi  # type: ignore[union-attr]
    assert ha_spi is not None and ha_spi >= 256 and ha_spi not in (MN_HA_SPI, PROVISIONED_SPI)
    assert (nonce.aaa_spi, nonce.agent_spi, nonce.replay_method, nonce.nonce) == (2, ha_spi, 2, HA_NONCE)
    order = [type(e).__name__ for e in decoded.extensions]
    assert order.index("KeyReplyExtension") < order.index("AuthenticationExtension")
    new_key = Secret(rfc3957_key(HA_NONCE))
    spi, mn_ha_auth, covered = authenticator(reply, ExtensionType.MN_HA_AUTH)
    assert (spi, len(mn_ha_auth)) == (MN_HA_SPI, 20) and nonce.algorithm == SHA1
    assert mn_ha_auth == hmac_sha1(rfc3957_key(HA_NONCE), covered)
    assert verify_authentication(reply, ExtensionType.MN_HA_AUTH, new_key, spi=MN_HA_SPI, algorithm=SHA1)
    assert not verify_authentication(reply, ExtensionType.MN_HA_AUTH, new_key, spi=MN_HA_SPI)
    assert not verify_authentication(reply, ExtensionType.MN_HA_AUTH, MN_HA, spi=PROVISIONED_SPI)

    # The node derived both keys; they are the agents'.
    assert mn.mn_ha is not None and mn.mn_ha.key == new_key == ha.bindings[NAI].mn_ha.key  # type: ignore[union-attr]
    assert (mn.mn_ha.spi, mn.mn_ha.reply_spi) == (ha_spi, MN_HA_SPI)
    assert mn.mn_fa is not None and mn.mn_fa.key == Secret(rfc3957_key(NONCE)) == fa.visitors[NAI].mn_fa.key  # type: ignore[union-attr]
    assert rfc3957_key(HA_NONCE).hex() not in repr(mn.mn_ha) + repr(ha.bindings[NAI])

    # The next registration, with no new key: the node's MN-HA authenticator is under the new MSA.
    fa_keys.enabled = ha_keys.enabled = False
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0, net.nodes["mn"].done()[-1]
    renewal = requests[-1]
    spi, mn_ha_auth, covered = authenticator(renewal, ExtensionType.MN_HA_AUTH)
    assert spi == ha_spi and mn_ha_auth == hmac_sha1(new_key.value, covered)
    # The FA-HA authentication the FA adds stays HMAC-MD5 (16 octets).
    assert len(authenticator(renewal, ExtensionType.FA_HA_AUTH)[1]) == 16
    assert ha.bindings[NAI].mn_ha is not None and ha.bindings[NAI].mn_ha.key == new_key
    assert verify_authentication(replies[-1], ExtensionType.MN_HA_AUTH, new_key, spi=MN_HA_SPI, algorithm=SHA1)

    # Deregistration under the new MSA; then the node is back on its provisioned key.
    net.advance(5)
    mn.deregister(net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0 and NAI not in ha.bindings
    assert verify_authentication(requests[-1], ExtensionType.MN_HA_AUTH, new_key, spi=ha_spi, algorithm=SHA1)
    assert verify_authentication(replies[-1], ExtensionType.MN_HA_AUTH, new_key, spi=MN_HA_SPI, algorithm=SHA1)
    assert mn.mn_ha is None
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert verify_authentication(requests[-1], ExtensionType.MN_HA_AUTH, MN_HA, spi=PROVISIONED_SPI)
    assert len(authenticator(requests[-1], ExtensionType.MN_HA_AUTH)[1]) == 16


def under_the_derived_mn_ha_msa(net: Network) -> tuple[HomeAgent, MobileNode]:
    """The node registered at FA1 with an MN-HA key from AAA; after that the
    HA's AAA gives no new key, so later requests go under the MSA the node derived."""
    ha, mn = net.nodes["ha"].agent, net.nodes["mn"].agent
    assert isinstance(ha, HomeAgent) and isinstance(mn, MobileNode)
    ha.radius = ha_keys = WithMnHaKey(ha.radius)  # type: ignore[assignment]
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert mn.mn_ha is not None
    ha_keys.enabled = False
    return ha, mn


def test_a_request_under_the_new_spi_with_another_key_is_refused(net: Network) -> None:
    ha, mn = under_the_derived_mn_ha_msa(net)
    assert mn.mn_ha is not None
    mn.mn_ha = dataclasses.replace(mn.mn_ha, key=Secret(b"not the derived key"))
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    # The HA refuses it (131); its denial, sent before it holds the view, carries no FA-HA
    # authentication, so the FA passes the node 68 -- as for any MN-HA failure.
    assert ha.counters["denied.131"] == 1
    assert net.nodes["mn"].done()[-1].code != 0


def test_an_hmac_md5_authenticator_under_the_new_spi_is_refused(net: Network) -> None:
    ha, mn = under_the_derived_mn_ha_msa(net)
    requests = requests_to_the_ha(net)
    assert mn.mn_ha is not None and mn.mn_ha.algorithm == SHA1
    # The right key and SPI, but HMAC-MD5 rather than the HMAC-SHA-1 the MSA names.
    mn.mn_ha = dataclasses.replace(mn.mn_ha, algorithm=KeyGenAlgorithm.HMAC_MD5)
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    spi, md5_auth, covered = authenticator(requests[-1], ExtensionType.MN_HA_AUTH)
    ha_spi = ha.bindings[NAI].mn_ha.agent_spi  # type: ignore[union-attr]
    assert spi == ha_spi and md5_auth == hmac.new(rfc3957_key(HA_NONCE), covered, hashlib.md5).digest()
    assert ha.counters["denied.131"] == 1
    assert net.nodes["mn"].done()[-1].code != 0


def test_an_msa_naming_another_algorithm_gives_no_key(net: Network) -> None:
    fa, ha, mn = (net.nodes[name].agent for name in ("fa1", "ha", "mn"))
    assert isinstance(fa, ForeignAgent) and isinstance(ha, HomeAgent) and isinstance(mn, MobileNode)
    fa.radius = WithMnFaKey(fa.radius, algorithm=1)  # type: ignore[assignment]
    ha.radius = WithMnHaKey(ha.radius, algorithm=7)  # type: ignore[assignment]
    replies = replies_to_the_node(net)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    # Refused and counted at both agents. The FA has no MN-FA key to give: 107 (RFC 3957 section 7),
    # and the node asks again without the MN-FA request (roles/mn.py rule 9); that goes on as without keys.
    assert net.nodes["mn"].done()[-1].code == 0
    codes = [mip.decode_registration_reply(r).code for r in replies]
    assert codes[:3] == [105, 107, 0], codes  # no challenge yet; no MN-FA key; accepted
    assert fa.counters["mn_fa_keys_unavailable"] == 1 and mn.counters["keys.mn_fa_unavailable"] == 1
    assert fa.counters["mn_fa_keys_refused"] == 2 and ha.counters["mn_ha_keys_refused"] == 1
    assert fa.visitors[NAI].mn_fa is None and ha.bindings[NAI].mn_ha is None
    reply = replies[-1]
    assert not any(isinstance(e, KeyReplyExtension) for e in mip.decode_registration_reply(reply).extensions)
    assert verify_authentication(reply, ExtensionType.MN_HA_AUTH, MN_HA, spi=PROVISIONED_SPI)
    assert mn.mn_ha is None and mn.mn_fa is None


def test_the_node_refuses_a_nonce_reply_naming_another_algorithm(net: Network) -> None:
    fa, ha, mn = (net.nodes[name].agent for name in ("fa1", "ha", "mn"))
    assert isinstance(fa, ForeignAgent) and isinstance(ha, HomeAgent) and isinstance(mn, MobileNode)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    send = net.link.send

    def rewrite(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        # The MN-FA Key Generation Nonce Reply's Algorithm Identifier (after Type, Subtype,
        # Length, Lifetime, AAA SPI and FA SPI) becomes 7 on its way to the node.
        if destination[0] == MN_SOCKET and data[:1] == b"\x03":
            _, spans = mip.decode_message_spans(data)
            for span in spans:
                extension = span.extension
                if isinstance(extension, KeyReplyExtension) and extension.type == ExtensionType.MN_FA_KEY_REPLY:
                    at = span.start + 16
                    data = data[:at] + b"\x00\x07" + data[at + 2 :]
        send(source, destination, data)

    net.link.send = rewrite  # type: ignore[method-assign]
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    # No MN-FA key (counted); the reply is still the HA's, under the provisioned MN-HA key.
    assert net.nodes["mn"].done()[-1].code == 0
    assert mn.counters["keys.unknown_algorithm"] >= 1 and mn.mn_fa is None
    assert fa.visitors[NAI].mn_fa is not None


def test_the_binding_msa_survives_a_restart_of_the_ha(net: Network) -> None:
    ha, mn = net.nodes["ha"].agent, net.nodes["mn"].agent
    assert isinstance(ha, HomeAgent) and isinstance(mn, MobileNode)
    ha.radius = WithMnHaKey(ha.radius)  # type: ignore[assignment]
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    credential = Secret(b"journal credential")
    sealed = encode_journal(ha.export_state(), "ha", ha.config.address, credential, net.clock)
    again = HomeAgent(ha.config)
    again.restore_state(decode_journal(sealed, "ha", ha.config.address, credential), net.clock)
    assert again.bindings[NAI].mn_ha == ha.bindings[NAI].mn_ha is not None


def test_a_move_to_another_fa_leaves_the_mn_fa_key_behind(net: Network) -> None:
    from .mobility import FA2

    net.add_fa("fa2", FA2)
    fa, mn = net.nodes["fa1"].agent, net.nodes["mn"].agent
    assert isinstance(fa, ForeignAgent) and isinstance(mn, MobileNode)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert mn.mn_fa is not None and mn.counters["keys.mn_fa"] == 1
    net.advance(5)
    to_fa2 = requests_from_the_node(net)
    mn.register(net.fa_address(FA2), net.clock, previous_fa=IPv4Address(FA1))
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert mn.mn_fa is None  # FA2 holds no MSA with the node
    # ... and the request through FA2 carried no MN-FA authentication under FA1's key.
    assert mn.counters["keys.mn_fa"] == 1 and 33 not in extension_types(to_fa2[0])


def test_a_lost_deregistration_reply_is_answered_again_under_the_new_msa(net: Network) -> None:
    ha, mn = under_the_derived_mn_ha_msa(net)
    replies = replies_to_the_node(net)
    send = net.link.send
    lost: list[bytes] = []

    def lose_first(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        # The HA's first answer to the deregistration is lost on its way to the FA.
        if source[0] == HA and data[:1] == b"\x03" and not lost:
            lost.append(data)
            return
        send(source, destination, data)

    net.link.send = lose_first  # type: ignore[method-assign]
    net.advance(5)
    mn.deregister(net.clock)
    net.settle()
    net.advance(30)
    net.settle()
    assert lost and net.nodes["mn"].done()[-1].code == 0 and NAI not in ha.bindings
    # The node's retransmission (a new Identification) reached the HA after its binding went:
    # answered from the deregistration's tombstone, checked under the MSA and its algorithm.
    assert ha.counters["deregistrations_repeated"] == 1
    # Both answers are under the MSA the request used: HMAC-SHA-1.
    new_key = Secret(rfc3957_key(HA_NONCE))
    spi, auth, covered = authenticator(replies[-1], ExtensionType.MN_HA_AUTH)
    assert (spi, auth) == (MN_HA_SPI, hmac_sha1(new_key.value, covered))
    assert verify_authentication(lost[0], ExtensionType.MN_HA_AUTH, new_key, spi=MN_HA_SPI, algorithm=SHA1)


def requests_from_the_node(net: Network) -> list[bytes]:
    return recorded(net, lambda source, _destination, data: source == MN_SOCKET and data[:1] == b"\x01")


def extension_types(message: bytes) -> list[int]:
    _, spans = mip.decode_message_spans(message)
    return [message[s.start] for s in spans]


def registered_with_mn_fa_key(net: Network) -> tuple[ForeignAgent, MobileNode]:
    fa, mn = net.nodes["fa1"].agent, net.nodes["mn"].agent
    assert isinstance(fa, ForeignAgent) and isinstance(mn, MobileNode)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0 and mn.mn_fa is not None
    return fa, mn


def test_later_requests_to_that_fa_end_with_mn_fa_authentication_under_the_key(net: Network) -> None:
    fa, mn = registered_with_mn_fa_key(net)
    fa_spi = fa.visitors[NAI].mn_fa.agent_spi  # type: ignore[union-attr]
    requests = requests_from_the_node(net)
    relayed = requests_to_the_ha(net)
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)  # a renewal
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    net.advance(5)
    mn.deregister(net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0 and NAI not in fa.visitors
    key = rfc3957_key(NONCE)
    renewal, deregistration = requests[0], requests[-1]
    # RFC 5944 section 3.6.1.3: MN-HA, then the challenge and MN-AAA (RFC 4721), MN-FA last.
    assert extension_types(renewal)[-4:] == [32, 132, 36, 33]
    assert extension_types(deregistration)[-4:] == [32, 132, 36, 33]  # the node had a challenge
    for request in (renewal, deregistration):
        spi, auth, covered = authenticator(request, ExtensionType.MN_FA_AUTH)
        assert spi == fa_spi != MN_FA_SPI and request[-26:-24] == bytes((33, 24))  # the FA's SPI
        assert auth == hmac_sha1(key, covered) and covered == request[:-20]
    # The FA checked both and relayed neither with it (RFC 5944 section 3.7.2.2).
    assert fa.counters["mn_fa_auth_verified"] == 2
    assert relayed and all(33 not in extension_types(r) for r in relayed)


def test_a_wrong_or_missing_mn_fa_authenticator_is_refused_with_67(net: Network) -> None:
    fa, mn = registered_with_mn_fa_key(net)
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)  # verifies: the FA now knows the node holds the key
    net.settle()
    assert fa.visitors[NAI].mn_fa_confirmed
    replies = replies_to_the_node(net)
    relayed = requests_to_the_ha(net)
    send = net.link.send
    mangle: list[str] = []

    def tamper(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        if source[0] == MN_SOCKET and data[:1] == b"\x01" and mangle:
            if mangle[0] == "wrong":
                data = data[:-1] + bytes([data[-1] ^ 1])
            else:  # missing: the request without its last extension
                data = data[:-26]
        send(source, destination, data)

    net.link.send = tamper  # type: ignore[method-assign]
    for what, counter in (("wrong", "mn_fa_auth_failed"), ("missing", "mn_fa_auth_missing")):
        mangle[:] = [what]
        if what == "missing":
            # a request asking for a new MN-FA key is let through to AAA (the next test)
            mn.config = dataclasses.replace(mn.config, request_keys=False)
        net.advance(5)
        mn.register(net.fa_address(FA1), net.clock)
        net.settle()
        done = net.nodes["mn"].done()[-1]
        assert done.code == mip.ReplyCode.FA_MN_FAILED_AUTHENTICATION == 67, (what, done)
        assert fa.counters[counter] == 1
        assert mip.decode_registration_reply(replies[-1]).code == 67
    assert relayed == []  # nothing went to the home agent
    # A deregistration under a wrong key is refused too; the visitor stays.
    mangle[:] = ["wrong"]
    mn.deregister(net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 67 and NAI in fa.visitors and relayed == []


def test_a_node_that_lost_a_used_mn_fa_key_gets_a_new_one_through_aaa(net: Network) -> None:
    """The node used its MN-FA key (the FA holds it confirmed), then lost it (a
    restart): its next registration carries no MN-FA authentication but asks for
    a new key, so the FA lets AAA authenticate it (MN-AAA) instead of refusing it
    67 until the visitor expires; the new key is the visitor's and the node's,
    and the renewal after verifies under it."""
    fa, mn = registered_with_mn_fa_key(net)
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert fa.visitors[NAI].mn_fa_confirmed
    mn.mn_fa = None  # the node restarted
    requests = requests_from_the_node(net)
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert find_authentication(requests[-1], ExtensionType.MN_FA_AUTH) is None
    assert fa.counters["mn_fa_rekeyed"] == 1 and fa.counters["mn_fa_auth_missing"] == 0
    visitor_key = fa.visitors[NAI].mn_fa
    assert mn.mn_fa is not None and visitor_key is not None and not fa.visitors[NAI].mn_fa_confirmed
    assert mn.mn_fa.key.value == visitor_key.key.value
    verified = fa.counters["mn_fa_auth_verified"]
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert fa.counters["mn_fa_auth_verified"] == verified + 1 and fa.visitors[NAI].mn_fa_confirmed


def test_a_node_that_lost_the_reply_with_the_key_may_still_register_without_it(net: Network) -> None:
    fa, mn = registered_with_mn_fa_key(net)
    assert not fa.visitors[NAI].mn_fa_confirmed and fa.visitors[NAI].mn_fa_before is None
    requests = requests_from_the_node(net)
    replies = replies_to_the_node(net)
    mn.mn_fa = None  # as if the reply that brought it had been lost
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0 and 33 not in extension_types(requests[0])
    assert fa.counters["mn_fa_auth_previous"] == 1
    # The FA went back to what the node has, no key, and so asked AAA for a full answer (no profile
    # digest): it brought a new key, which the node now holds; its next request is under it.
    visitor = fa.visitors[NAI]
    assert visitor.mn_fa is not None and not visitor.mn_fa_confirmed and visitor.mn_fa_before is None
    assert mn.mn_fa is not None and extension_types(replies[-1])[-2:] == [41, 33]
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0 and extension_types(requests[-1])[-1] == 33
    assert fa.visitors[NAI].mn_fa_confirmed and fa.counters["mn_fa_auth_verified"] == 1


def test_without_an_mn_fa_key_requests_carry_no_mn_fa_authentication(net: Network) -> None:
    mn = net.nodes["mn"].agent
    assert isinstance(mn, MobileNode)
    requests = requests_from_the_node(net)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0 and mn.mn_fa is None
    assert len(requests) >= 2 and all(33 not in extension_types(r) for r in requests)


class ScriptedSpis:
    """An agent's random source whose 4-octet draws (only SPI allocation makes
    them) come from a script, each value or a function giving it at the draw."""

    def __init__(self, script: list[object]) -> None:
        self.script = script
        self.drawn: list[int] = []

    def __call__(self, n: int) -> bytes:
        if n != 4:
            return os.urandom(n)
        value = self.script.pop(0)
        spi = value() if callable(value) else value
        assert isinstance(spi, int)
        self.drawn.append(spi)
        return spi.to_bytes(4, "big")


def test_the_agents_allocate_their_spis_never_reserved_provisioned_or_taken(net: Network) -> None:
    from aaa_vpn.roles.fa import HANDOFF_SPI
    from aaa_vpn.roles.ha import BINDING_SPI

    fa, ha, mn = (net.nodes[name].agent for name in ("fa1", "ha", "mn"))
    assert isinstance(fa, ForeignAgent) and isinstance(ha, HomeAgent) and isinstance(mn, MobileNode)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    ha.radius = WithMnHaKey(ha.radius)  # type: ignore[assignment]

    def fa_ha_spi() -> int:
        """The FA-HA SPI AAA gave for this registration (the FA holds it from before the HA's turn)."""
        [pending] = [p for p in fa._pending.values() if p.profile is not None]
        assert pending.profile is not None and pending.profile.fa_ha_spi is not None
        return pending.profile.fa_ha_spi

    # Each agent draws past a reserved SPI, its own fixed SPIs, the FA-HA SPI, the node's SPIs.
    fa.random_bytes = fa_draws = ScriptedSpis(  # type: ignore[method-assign]
        [5, HANDOFF_SPI, MN_FA_SPI, fa_ha_spi, 0x12345678]
    )
    ha.random_bytes = ha_draws = ScriptedSpis(  # type: ignore[method-assign]
        [255, BINDING_SPI, PROVISIONED_SPI, MN_HA_SPI, fa_ha_spi, 0x2468ACE0]
    )
    replies = replies_to_the_node(net)
    requests = requests_from_the_node(net)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert not fa_draws.script and not ha_draws.script, (fa_draws.drawn, ha_draws.drawn)
    # On the wire: the FA and HA SPIs of the nonce replies are the agents' own; each agent's
    # authentication of the reply names the node's SPI (RFC 4004 sections 9.1 and 9.4).
    decoded = mip.decode_registration_reply(replies[-1])
    nonces = {e.type: decode_aaa_nonce(e) for e in decoded.extensions if isinstance(e, KeyReplyExtension)}
    assert nonces[ExtensionType.MN_FA_KEY_REPLY].agent_spi == 0x12345678
    assert nonces[ExtensionType.MN_HA_KEY_REPLY].agent_spi == 0x2468ACE0
    assert authenticator(replies[-1], ExtensionType.MN_HA_AUTH)[0] == MN_HA_SPI
    assert authenticator(replies[-1], ExtensionType.MN_FA_AUTH)[0] == MN_FA_SPI
    # The node's next request names the agents' SPIs, and both agents accept it.
    fa.random_bytes = ha.random_bytes = os.urandom  # type: ignore[method-assign]
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert authenticator(requests[-1], ExtensionType.MN_HA_AUTH)[0] == 0x2468ACE0
    assert authenticator(requests[-1], ExtensionType.MN_FA_AUTH)[0] == 0x12345678
    assert fa.counters["mn_fa_auth_verified"] == 1 and ha.counters["denied.131"] == 0
    assert 0x2468ACE0 in ha._spis_taken(ha.bindings[NAI].profile)
    assert 0x12345678 in fa._spis_taken(fa.visitors[NAI].profile)


def test_the_node_refuses_a_reserved_agent_spi(net: Network) -> None:
    fa, mn = net.nodes["fa1"].agent, net.nodes["mn"].agent
    assert isinstance(fa, ForeignAgent) and isinstance(mn, MobileNode)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    real = fa._node_reply

    def reserved_fa_spi(data: bytes, message: mip.RegistrationReply, mn_fa: MnKey | None, now: float) -> bytes:
        # An FA that names SPI 7 for the node's requests.
        return real(data, message, dataclasses.replace(mn_fa, agent_spi=7) if mn_fa else None, now)

    fa._node_reply = reserved_fa_spi  # type: ignore[method-assign]
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert mn.mn_fa is None and mn.counters["keys.refused"] >= 1


def test_an_fa_without_an_mn_fa_key_answers_107_and_the_node_asks_again_without(net: Network) -> None:
    """RFC 3957 section 7: the node asked for an MN-FA key, AAA's answer (RADIUS
    here) brings none: the FA denies with 107, before relaying anything."""
    fa, mn = net.nodes["fa1"].agent, net.nodes["mn"].agent
    assert isinstance(fa, ForeignAgent) and isinstance(mn, MobileNode)
    replies = replies_to_the_node(net)
    requests = requests_from_the_node(net)
    relayed = requests_to_the_ha(net)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    decoded = [mip.decode_registration_reply(r) for r in replies]
    assert [r.code for r in decoded][:3] == [105, 107, 0]
    denial = decoded[1]
    assert denial.code == mip.ReplyCode.FA_MISSING_MN_FA_KEY and denial.lifetime == 0
    assert any(isinstance(e, mip.ChallengeExtension) for e in denial.extensions)  # for the next request
    assert fa.counters["mn_fa_keys_unavailable"] == 1 and fa.counters["denied.107"] == 1
    # The request that got 107 asked for both keys; the one after asks for the MN-HA key only,
    # and only that one went to the home agent.
    asked = [[t for t in extension_types(r) if t in (40, 42)] for r in requests]
    assert asked[:3] == [[40, 42], [40, 42], [42]], asked
    assert len(relayed) == 1 and relayed[0][:24] == requests[2][:24]
    # Later registrations through this FA do not ask it again.
    net.advance(5)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0 and 40 not in extension_types(requests[-1])
    assert fa.counters["denied.107"] == 1


def test_a_request_that_is_not_accepted_leaves_the_visitors_key_alone(net: Network) -> None:
    """Rule 5a's allowance changes the visitor only when the registration is
    accepted: an old request replayed without MN-FA authentication while the
    key is unconfirmed is refused (its challenge is used) and the key stays."""
    from aaa_vpn.roles.agent import Channel

    fa, mn = net.nodes["fa1"].agent, net.nodes["mn"].agent
    assert isinstance(fa, ForeignAgent) and isinstance(mn, MobileNode)
    requests = requests_from_the_node(net)
    fa.radius = WithMnFaKey(fa.radius)  # type: ignore[assignment]
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    key = fa.visitors[NAI].mn_fa
    assert key is not None and not fa.visitors[NAI].mn_fa_confirmed
    old = next(r for r in requests if 132 in extension_types(r))  # with a challenge, no MN-FA authentication
    replies = replies_to_the_node(net)
    net.advance(fa.config.challenge_lifetime + 1)
    fa.receive_datagram(Channel.MIP, old, (MN_SOCKET, 434), net.clock)
    net.settle()
    assert mip.decode_registration_reply(replies[-1]).code in (104, 106)
    assert fa.visitors[NAI].mn_fa == key and not fa.visitors[NAI].mn_fa_confirmed
    assert fa.counters["mn_fa_auth_previous"] == 1


def test_the_ha_takes_fa_ha_authentication_under_hmac_sha1_and_answers_in_kind(net: Network) -> None:
    """An RFC 4004 FA computes FA-HA authentication with the algorithm the
    AMA's MIP-FA-to-HA-MSA names (MIP-Algorithm-Type 2, HMAC-SHA-1); this
    project's FA keeps HMAC-MD5. The HA takes either under the FA-HA key (the
    authenticator's length says which) and authenticates its reply with the
    request's algorithm (ha.py rule 4c). Here FA1's relayed request is re-signed
    with HMAC-SHA-1 on its way to the HA, and the HA's reply is checked on its
    way back (then re-signed with HMAC-MD5 for FA1, which speaks only that)."""
    from aaa_vpn import keys

    def fa_ha_key() -> Secret:
        (session,) = net.store.find_sessions(NAI)
        return keys.derive_fa_ha_key(session.session_root_key, IPv4Address(FA1), IPv4Address(HA), session.epoch)

    requests: list[bytes] = []
    replies: list[bytes] = []
    send = net.link.send

    def resign(data: bytes, algorithm: KeyGenAlgorithm) -> bytes:
        site = find_authentication(data, ExtensionType.FA_HA_AUTH)
        assert site is not None and site.end == len(data)
        spi, key = site.extension.spi, fa_ha_key()
        return append_authentication(data[: site.start], ExtensionType.FA_HA_AUTH, spi, key, algorithm)

    def tamper(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        if (source[0], destination[0]) == (FA1, HA) and data[:1] == b"\x01":
            data = resign(data, KeyGenAlgorithm.HMAC_SHA1)
            requests.append(data)
        elif (source[0], destination[0]) == (HA, FA1) and data[:1] == b"\x03":
            replies.append(data)
            data = resign(data, KeyGenAlgorithm.HMAC_MD5)
        send(source, destination, data)

    net.link.send = tamper  # type: ignore[method-assign]
    mn = net.nodes["mn"].agent
    assert isinstance(mn, MobileNode)
    mn.register(net.fa_address(FA1), net.clock)
    net.settle()
    assert net.nodes["mn"].done()[-1].code == 0
    assert requests and replies
    key = fa_ha_key()
    for data in requests + replies:
        site = find_authentication(data, ExtensionType.FA_HA_AUTH)
        assert site is not None and len(site.extension.authenticator) == 20
        assert verify_authentication(data, ExtensionType.FA_HA_AUTH, key, algorithm=KeyGenAlgorithm.HMAC_SHA1)
        assert not verify_authentication(data, ExtensionType.FA_HA_AUTH, key)  # not HMAC-MD5
    ha = net.nodes["ha"].agent
    assert isinstance(ha, HomeAgent) and NAI in ha.bindings
