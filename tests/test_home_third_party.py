"""The home AAA toward third-party RADIUS equipment (roles/home_aaa.py rules
7, 11 and 13), in one process with the in-memory store: the identification
attributes a NAS sent are kept with the session and repeated in its
Disconnect- and CoA-Requests; pushes go out in each client's flavour; the
3GPP2 flavour sends 3GPP2-KeyID and the pre-shared secret in the client's
encoding; an HA's 3GPP2-Foreign-Agent-Address is checked like
Aaa-Vpn-Care-Of-Address; the rfc2868 flavour marks the tunnels a receiver
only relays. The same against FreeRADIUS as the CoA/DM server is
tests/test_freeradius_coa.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from aaa_vpn.model import Flavour, KeyMode, PskEncoding
from aaa_vpn.roles.home_aaa import CoaTarget
from aaa_vpn.service.home import HomeService
from aaa_vpn.store.memory import MemoryStore
from aaa_vpn.wire import coa
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import RejectReason
from aaa_vpn.wire.radius_profile import decode_3gpp2, decode_tunnel_attributes, parse_key_id
from aaa_vpn.wire.radius_request import AccessRequest, Rejected

from .test_home_service import (
    FA1,
    FA2,
    HA,
    NAI,
    NOW,
    SECRETS,
    Client_,
    fa_request,
    ha_request,
    only_session,
    profile_of,
    provision,
)

PDSN = "192.0.2.70"  # inside the "pdsn" client's 192.0.2.64/26, flavour 3gpp2


def _identification(nas: str, acct: bytes, calling: bytes = b"310150123456789") -> tuple[bytes, ...]:
    """What a PDSN adds to its Access-Request: NAS-Identifier, Calling-Station-Id,
    Acct-Session-Id (RFC 5176 section 3 identification attributes)."""
    return (
        rc.attribute(rc.Attr.CALLING_STATION_ID, calling),
        rc.attribute(rc.Attr.ACCT_SESSION_ID, acct),
        rc.attribute(rc.Attr.NAS_IDENTIFIER, nas.encode()),
    )


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    memory = MemoryStore()
    provision(memory)
    yield memory


def _attributes(packet: bytes) -> list[tuple[int, bytes]]:
    return rc.decode_packet(packet).attributes


def _accept(client: Client_, request: AccessRequest, now: float = NOW) -> tuple[bytes, bytes]:
    """The raw request and the raw Access-Accept, for a client of a third-party flavour."""
    raw = client.packet(request)
    client.port += 1
    reply = client.service.handle(raw, (client.address, client.port), now)
    assert reply is not None and reply[0] == rc.ACCESS_ACCEPT, reply
    return raw, reply


def _target(requests: tuple[tuple[CoaTarget, bytes | None], ...], role: str) -> tuple[CoaTarget, bytes]:
    target, packet = next((t, p) for t, p in requests if t.role == role)
    assert packet is not None, f"no request for the {role}"
    return target, packet


def test_identification_is_stored_and_repeated_in_a_disconnect(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    pdsn = Client_(service, PDSN, SECRETS["pdsn"])
    sent = _identification("pdsn-1", b"acct-0001")
    _accept(pdsn, fa_request(PDSN, extra=sent))
    session = only_session(store)
    nas_ip = rc.attribute(rc.NAS_IP_ADDRESS, IPv4Address(PDSN).packed)
    # NAS-IP-Address first (the codec sends it first), then the PDSN's own, in its order
    assert session.fa_identification == nas_ip + b"".join(sent)
    # the HA's request: its NAS-IP-Address and NAS-Identifier, written once (IDENTIFY), not again
    ha = Client_(service, HA)
    ha_request_ = ha_request(session.session_id, PDSN, None, nas_identifier="ha-1")
    profile_of(ha.accepted(ha_request_, NOW + 1))
    ha_id = rc.attribute(rc.NAS_IP_ADDRESS, IPv4Address(HA).packed) + rc.attribute(rc.NAS_IDENTIFIER, b"ha-1")
    assert only_session(store).ha_identification == ha_id
    profile_of(ha.accepted(ha_request_, NOW + 2))
    assert only_session(store).ha_identification == ha_id
    # a renewal with a new Acct-Session-Id is written, whatever the expiry
    renewed = _identification("pdsn-1", b"acct-0002")
    _accept(pdsn, fa_request(PDSN, session_id=session.session_id, extra=renewed), NOW + 3)
    assert only_session(store).fa_identification == nas_ip + b"".join(renewed)

    authorization = service.disconnect(session.session_id, NOW + 4)
    target, packet = _target(authorization.requests, "fa")
    assert (target.client, target.flavour) == ("pdsn", Flavour.THREEGPP2)
    decoded = coa.decode_request(packet, SECRETS["pdsn"])
    assert decoded is not None and decoded.nai == NAI and not decoded.session_id
    body = packet[rc.HEADER_LENGTH :]
    assert rc.attribute(rc.USER_NAME, NAI.encode()) + nas_ip + b"".join(renewed) in body
    assert not any(c == rc.VENDOR_SPECIFIC for c, _ in _attributes(packet)), "no vendor attribute to a PDSN"
    target, packet = _target(authorization.requests, "ha")
    decoded = coa.decode_request(packet, SECRETS[HA])
    assert decoded is not None and decoded.session_id == session.session_id  # aaa-vpn flavour: ours too
    assert ha_id in packet


def test_an_fa_that_moves_away_leaves_no_stale_identification(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    first = profile_of(Client_(service, FA1).accepted(fa_request(extra=_identification("fa-1", b"a1"))))
    assert b"fa-1" in only_session(store).fa_identification
    # moved by FA2 itself: FA2's own
    profile_of(Client_(service, FA2).accepted(fa_request(FA2, previous_fa=IPv4Address(FA1)), NOW + 1))
    assert only_session(store).fa_identification == rc.attribute(rc.NAS_IP_ADDRESS, IPv4Address(FA2).packed)
    # moved back, reported by the HA (a foreign AAA answered the FA): none, the FA never asked here
    profile_of(Client_(service, HA).accepted(ha_request(first.session_id, FA1, 3), NOW + 2))
    assert only_session(store).fa_identification == b""


def test_an_ha_names_its_fa_with_the_3gpp2_attribute_checked_like_ours(store: MemoryStore) -> None:
    service = HomeService(store, now=NOW)
    first = profile_of(Client_(service, FA1).accepted(fa_request()))
    ha = Client_(service, HA)
    # both, disagreeing: Bad-Request, nothing changes
    before = only_session(store)
    both = ha_request(first.session_id, FA1, None, threegpp2_foreign_agent=IPv4Address(FA2))
    answer = ha.ask(both, NOW + 1)
    assert isinstance(answer, Rejected) and answer.reason is RejectReason.BAD_REQUEST, answer
    assert "3GPP2-Foreign-Agent-Address" in (answer.message or "")
    assert only_session(store) == before
    # only the 3GPP2 attribute, naming another FA: a move reported by the HA, like the care-of attribute
    only_3gpp2 = dataclasses.replace(
        ha_request(first.session_id, FA2, 2), care_of_address=None, threegpp2_foreign_agent=IPv4Address(FA2)
    )
    moved = profile_of(ha.accepted(only_3gpp2, NOW + 2))
    assert (moved.epoch, str(moved.care_of_address)) == (2, FA2)
    assert (only_session(store).epoch, str(only_session(store).care_of_address)) == (2, FA2)
    # naming an FA and an epoch that do not fit: No-Session, as with the care-of attribute
    stale = dataclasses.replace(
        ha_request(first.session_id, FA1, 1), care_of_address=None, threegpp2_foreign_agent=IPv4Address(FA1)
    )
    answer = ha.ask(stale, NOW + 3)
    assert isinstance(answer, Rejected) and answer.reason is RejectReason.NO_SESSION, answer


@pytest.mark.parametrize("encoding", list(PskEncoding))
def test_3gpp2_replies_carry_the_key_id_and_the_secret_in_the_clients_encoding(
    store: MemoryStore, encoding: PskEncoding
) -> None:
    pdsn_client = store.get_client("pdsn")
    store.update_client(dataclasses.replace(pdsn_client, psk_encoding=encoding))
    store.update_service(dataclasses.replace(store.get_service("gold"), key_mode=KeyMode.IKEV2))  # a PSK per path
    service = HomeService(store, now=NOW)
    pdsn = Client_(service, PDSN, SECRETS["pdsn"])
    raw, reply = _accept(pdsn, fa_request(PDSN))
    got = decode_3gpp2(reply[rc.HEADER_LENGTH :], SECRETS["pdsn"], raw[4:20], encoding)
    session = only_session(store)
    assert got.key_id is not None
    assert parse_key_id(got.key_id) == (IPv4Address(PDSN), IPv4Address(HA), int(session.epoch_started))
    assert int(session.epoch_started) == int(NOW)
    assert got.pre_shared_secret is not None and len(got.pre_shared_secret.value) >= 16
    plain_on_wire = got.pre_shared_secret.value in reply
    assert plain_on_wire is (encoding is PskEncoding.PLAIN)
    # the HA's view of the same path carries the same pre-shared secret (aaa-vpn flavour)
    ha_view = profile_of(Client_(service, HA).accepted(ha_request(session.session_id, PDSN, None), NOW + 1))
    fa_ha = next(p for p in ha_view.paths if p.peer == IPv4Address(PDSN))
    assert fa_ha.ike_psk == got.pre_shared_secret
    # a push re-keys at the next epoch: a new KeyID time, in the client's flavour and encoding
    pushed = service.push(session.session_id, NOW + 50)
    assert not pushed.error, pushed.error
    target, packet = _target(pushed.requests, "fa")
    assert (target.flavour, target.psk_encoding) == (Flavour.THREEGPP2, encoding)
    vsas = [v for c, v in _attributes(packet) if c == rc.VENDOR_SPECIFIC]
    assert {int.from_bytes(v[:4], "big") for v in vsas} == {rc.THREEGPP2_VENDOR_ID}
    got = decode_3gpp2(packet[rc.HEADER_LENGTH :], SECRETS["pdsn"], coa.ZERO_AUTHENTICATOR, encoding)
    assert got.key_id is not None and parse_key_id(got.key_id)[2] == int(NOW + 50)
    assert int(only_session(store).epoch_started) == int(NOW + 50)


def test_an_ha_of_the_rfc2868_flavour_tells_its_own_tunnels_from_relayed_ones(store: MemoryStore) -> None:
    """docs/radius-attributes.md: a tunnel whose Tunnel-Assignment-Id starts
    with ``relay:`` (and whose client endpoint is not the receiver) is one the
    receiver only hands on."""
    ha_client = store.get_client("ha")
    store.update_client(dataclasses.replace(ha_client, flavour=Flavour.RFC2868))
    service = HomeService(store, now=NOW)
    first = profile_of(Client_(service, FA1).accepted(fa_request()))
    ha = Client_(service, HA)
    raw, reply = _accept(ha, ha_request(first.session_id, FA1, None), NOW + 1)
    tunnels = decode_tunnel_attributes(reply[rc.HEADER_LENGTH :], SECRETS[HA], raw[4:20]).tunnels
    own = [t for t in tunnels if not t.relayed]
    relayed = [t for t in tunnels if t.relayed]
    assert own and all(t.client_endpoint == HA for t in own)
    # the dynamic gateway's FA-GW path: handed on in a Binding Update, not the HA's own tunnel
    assert [(t.assignment_id, t.client_endpoint, t.server_endpoint) for t in relayed] == [
        ("relay:fa-gw", "192.0.2.20", FA1)
    ]


def test_no_client_role_is_told_the_vendor_session_id_unless_it_speaks_aaa_vpn(store: MemoryStore) -> None:
    """A CoA-Request to an rfc2868 client: User-Name, identification, the tunnels; no vendor attribute."""
    fa_client = store.get_client("fa1")
    store.update_client(dataclasses.replace(fa_client, flavour=Flavour.RFC2868))
    service = HomeService(store, now=NOW)
    _accept(Client_(service, FA1), fa_request(extra=_identification("fa-1", b"a1")))
    pushed = service.push(only_session(store).session_id, NOW + 10)
    assert not pushed.error, pushed.error
    target, packet = _target(pushed.requests, "fa")
    assert target.flavour is Flavour.RFC2868
    assert not any(c == rc.VENDOR_SPECIFIC for c, _ in _attributes(packet))
    tunnels = decode_tunnel_attributes(packet[rc.HEADER_LENGTH :], SECRETS[FA1], coa.ZERO_AUTHENTICATOR).tunnels
    assert tunnels and not any(t.relayed for t in tunnels)
    assert (rc.Attr.ACCT_SESSION_ID, b"a1") in _attributes(packet)
