"""The memory SA backend: install/delete semantics of the SaBackend interface,
atomic installs, and a working ESP data path between the two ends of a path
(an FA and an HA, with mirrored profiles built by hand)."""

from __future__ import annotations

import dataclasses
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest

from aaa_vpn.model import EspTransform, KeyMode
from aaa_vpn.sa import InstalledPath, MemoryBackend, SaBackend, SaConflict, SaError, SaUnsupported, path_owner
from aaa_vpn.sa.esp import EspError, EspErrorReason, decapsulate, encapsulate, internet_checksum
from aaa_vpn.sa.memory import Direction
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import PathProfile, PathRole, QosSpec

FA = IPv4Address("192.0.2.1")
HA = IPv4Address("192.0.2.2")
OTHER = IPv4Address("192.0.2.3")
MN = IPv4Address("198.51.100.10")  # the mobile node's home address, behind the FA
CN = IPv4Address("203.0.113.5")  # a correspondent host, behind the HA
MN_NET = IPv4Network("198.51.100.10/32")
CN_NET = IPv4Network("203.0.113.0/24")
OWNER = path_owner("s1", PathRole.FA_HA)


def mirrored(
    transform: EspTransform = EspTransform.AES_GCM_16_256,
    spi_fa: int = 0x1001,
    spi_ha: int = 0x2002,
    seed: int = 0,
    qos: QosSpec | None = None,
) -> tuple[PathProfile, PathProfile]:
    """The FA's and the HA's views of one FA-HA path: the same keys, swapped.

    ``spi_fa`` is the SPI the FA receives on (HA -> FA), ``spi_ha`` the HA's."""
    n = transform.keymat_length
    key_fa_to_ha = Secret(bytes((seed + i) & 0xFF for i in range(n)))
    key_ha_to_fa = Secret(bytes((seed + 0x80 + i) & 0xFF for i in range(n)))
    fa = PathProfile(
        role=PathRole.FA_HA,
        local=FA,
        peer=HA,
        local_ts=(MN_NET,),
        remote_ts=(CN_NET,),
        key_mode=KeyMode.MANUAL,
        esp_transform=transform,
        spi_in=spi_fa,
        spi_out=spi_ha,
        key_in=key_ha_to_fa,
        key_out=key_fa_to_ha,
        lifetime=3600,
        qos=qos,
    )
    ha = dataclasses.replace(
        fa,
        local=HA,
        peer=FA,
        local_ts=(CN_NET,),
        remote_ts=(MN_NET,),
        spi_in=spi_ha,
        spi_out=spi_fa,
        key_in=key_fa_to_ha,
        key_out=key_ha_to_fa,
    )
    return fa, ha


def udp(src: IPv4Address, dst: IPv4Address, payload: bytes = b"hello") -> bytes:
    """An IPv4/UDP packet with a correct header checksum."""
    total = 28 + len(payload)
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 7, 0, 64, 17, 0, src.packed, dst.packed)
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + struct.pack(">HHHH", 40000, 9, 8 + len(payload), 0) + payload


def readdress(packet: bytes, src: IPv4Address | None = None, dst: IPv4Address | None = None) -> bytes:
    """The outer packet with another source or destination (and a fixed checksum)."""
    header = bytearray(packet[:20])
    if src is not None:
        header[12:16] = src.packed
    if dst is not None:
        header[16:20] = dst.packed
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + packet[20:]


def reason_of(backend: MemoryBackend, packet: bytes) -> EspErrorReason:
    with pytest.raises(EspError) as info:
        backend.unprotect(packet)
    return info.value.reason


@pytest.fixture
def nodes() -> tuple[MemoryBackend, MemoryBackend]:
    fa_view, ha_view = mirrored()
    fa, ha = MemoryBackend(FA), MemoryBackend(HA)
    fa.install(fa_view, OWNER)
    ha.install(ha_view, OWNER)
    return fa, ha


def test_is_an_sa_backend() -> None:
    backend: SaBackend = MemoryBackend(FA)
    assert isinstance(backend, SaBackend)


@pytest.mark.parametrize("transform", list(EspTransform), ids=lambda t: t.name)
def test_encrypted_at_one_end_decrypts_at_the_other_only(transform: EspTransform) -> None:
    fa_view, ha_view = mirrored(transform)
    fa, ha, third = MemoryBackend(FA), MemoryBackend(HA), MemoryBackend(OTHER)
    fa.install(fa_view, OWNER)
    ha.install(ha_view, OWNER)
    # The third node has a path of its own with the FA, on other SPIs and keys.
    _, other_view = mirrored(transform, spi_fa=0x3003, spi_ha=0x4004, seed=0x40)
    third.install(dataclasses.replace(other_view, local=OTHER), "s2/FA_HA")

    inner = udp(MN, CN, b"uplink")
    routed = fa.protect(inner)
    assert routed is not None
    outer_dst, packet = routed
    assert outer_dst == HA
    outer = decapsulate(packet)
    assert (outer.src, outer.dst) == (FA, HA)
    assert outer.payload[:4] == (0x2002).to_bytes(4, "big"), "sent on the HA's inbound SPI"
    assert inner not in packet and b"uplink" not in packet

    assert reason_of(third, packet) is EspErrorReason.UNKNOWN_SPI
    assert reason_of(third, readdress(packet, dst=OTHER)) is EspErrorReason.UNKNOWN_SPI
    assert ha.unprotect(packet) == inner

    reply = udp(CN, MN, b"downlink")
    routed = ha.protect(reply)
    assert routed is not None and routed[0] == FA
    assert fa.unprotect(routed[1]) == reply

    # After delete, the HA refuses the path's packets and has no policy for them.
    assert ha.delete(OWNER) == 1
    assert ha.paths() == []
    again = fa.protect(udp(MN, CN, b"late"))
    assert again is not None
    assert reason_of(ha, again[1]) is EspErrorReason.UNKNOWN_SPI
    assert ha.protect(reply) is None
    assert ha.node_errors() == {"unknown_spi": 1}
    assert third.node_errors() == {"unknown_spi": 2}


def test_counters(nodes: tuple[MemoryBackend, MemoryBackend]) -> None:
    fa, ha = nodes
    packets = []
    for size in (10, 20, 30):
        routed = fa.protect(udp(MN, CN, bytes(size)))
        assert routed is not None
        packets.append(routed[1])
    for packet in packets:
        ha.unprotect(packet)
    assert reason_of(ha, packets[0]) is EspErrorReason.REPLAY
    tampered = bytearray(packets[2])
    tampered[-1] ^= 1
    assert reason_of(ha, bytes(tampered)) is EspErrorReason.REPLAY  # replay is checked first
    fresh = fa.protect(udp(MN, CN))
    assert fresh is not None
    tampered = bytearray(fresh[1])
    tampered[-1] ^= 1
    assert reason_of(ha, bytes(tampered)) is EspErrorReason.BAD_ICV

    (fa_in, fa_out) = fa.counters(OWNER)
    assert (fa_out.direction, fa_out.spi, fa_out.peer) == (Direction.OUT, 0x2002, HA)
    assert (fa_out.packets, fa_out.octets, fa_out.errors) == (4, 3 * 28 + 60 + 33, {})
    assert (fa_in.direction, fa_in.packets) == (Direction.IN, 0)
    (ha_in, ha_out) = ha.counters()
    assert (ha_in.spi, ha_in.packets, ha_in.octets) == (0x2002, 3, 3 * 28 + 60)
    assert ha_in.errors == {"replay": 2, "bad_icv": 1}
    assert ha_out.packets == 0
    assert ha.counters("nobody") == []


def test_outer_header_carries_dscp_and_counts_ident() -> None:
    fa_view, _ = mirrored(qos=QosSpec("gold", 46, 0))
    fa = MemoryBackend(FA)
    fa.install(fa_view, OWNER)
    first, second = fa.protect(udp(MN, CN)), fa.protect(udp(MN, CN))
    assert first is not None and second is not None
    assert decapsulate(first[1]).dscp == 46
    assert first[1][4:6] != second[1][4:6], "Identification differs per packet (RFC 6864)"


def test_outbound_policy_selection(nodes: tuple[MemoryBackend, MemoryBackend]) -> None:
    fa, _ = nodes
    assert fa.protect(udp(MN, CN)) is not None
    assert fa.protect(udp(CN, MN)) is None, "wrong direction"
    assert fa.protect(udp(MN, IPv4Address("192.0.2.99"))) is None, "destination outside remote_ts"
    assert fa.protect(udp(IPv4Address("198.51.100.11"), CN)) is None, "source outside local_ts"
    with pytest.raises(EspError) as info:
        fa.protect(b"\x60" + bytes(39))  # IPv6
    assert info.value.reason is EspErrorReason.MALFORMED


def test_newest_path_wins_outbound() -> None:
    # Make-before-break: the FA's new path to another HA takes the traffic at once,
    # while the old one still decrypts what is in flight.
    old_view, ha_view = mirrored()
    fa, ha = MemoryBackend(FA), MemoryBackend(HA)
    fa.install(old_view, OWNER)
    ha.install(ha_view, OWNER)
    in_flight = ha.protect(udp(CN, MN))
    assert in_flight is not None
    new_view = dataclasses.replace(mirrored(spi_fa=0x5005, spi_ha=0x6006, seed=0x20)[0], peer=OTHER)
    fa.install(new_view, "s1#2/FA_HA")
    routed = fa.protect(udp(MN, CN))
    assert routed is not None and routed[0] == OTHER
    assert fa.unprotect(in_flight[1]) == udp(CN, MN)
    assert fa.delete("s1#2/FA_HA") == 1
    routed = fa.protect(udp(MN, CN))
    assert routed is not None and routed[0] == HA


def test_a_forwarding_path_never_takes_the_nodes_own_traffic() -> None:
    # At the new FA the forwarding path's receiving end has the selectors of the
    # node's path to its HA (home address -> anything) and is set up after it;
    # it only receives: the node's own path keeps sending.
    own, _ = mirrored()
    fa = MemoryBackend(FA)
    fa.install(own, OWNER)
    forwarding = dataclasses.replace(
        mirrored(spi_fa=0x5005, spi_ha=0x6006, seed=0x20)[0], peer=OTHER, role=PathRole.FA_FA
    )
    fa.install(forwarding, "s1#1/forward")
    routed = fa.protect(udp(MN, CN))
    assert routed is not None and routed[0] == HA
    # alone, it is used (at the previous FA it is the only way to the node)
    assert fa.delete(OWNER) == 1
    routed = fa.protect(udp(MN, CN))
    assert routed is not None and routed[0] == OTHER


def test_inbound_checks_peer_destination_and_selectors() -> None:
    fa_view, ha_view = mirrored()
    # The HA accepts only 198.51.100.10 -> 203.0.113.5/32 on this SA, narrower than the FA sends.
    ha_view = dataclasses.replace(ha_view, local_ts=(IPv4Network("203.0.113.5/32"),))
    fa, ha = MemoryBackend(FA), MemoryBackend(HA)
    fa.install(fa_view, OWNER)
    ha.install(ha_view, OWNER)

    outside = fa.protect(udp(MN, IPv4Address("203.0.113.6")))
    assert outside is not None
    assert reason_of(ha, outside[1]) is EspErrorReason.POLICY  # RFC 4301 section 5.2

    good = fa.protect(udp(MN, CN))
    assert good is not None
    assert reason_of(ha, readdress(good[1], src=OTHER)) is EspErrorReason.WRONG_PEER
    assert reason_of(ha, readdress(good[1], dst=OTHER)) is EspErrorReason.BAD_OUTER
    assert ha.unprotect(good[1]) == udp(MN, CN)  # the refusals did not consume it
    assert reason_of(ha, good[1][:30]) is EspErrorReason.BAD_OUTER  # truncated
    assert reason_of(ha, encapsulate(FA, HA, b"\x00\x00")) is EspErrorReason.MALFORMED
    (ha_in, _) = ha.counters()
    assert ha_in.errors == {"policy": 1, "wrong_peer": 1, "bad_outer": 1}
    assert ha.node_errors() == {"bad_outer": 1, "malformed": 1}


def test_install_is_all_or_nothing() -> None:
    fa_view, _ = mirrored()
    fa = MemoryBackend(FA)
    # The outbound key is one octet short: the inbound half must not stay behind.
    broken = dataclasses.replace(fa_view, key_out=Secret(fa_view.key_out.value[:-1]))
    with pytest.raises(SaError, match="outbound key"):
        fa.install(broken, OWNER)
    assert fa.paths() == [] and fa.counters() == []
    assert fa.protect(udp(MN, CN)) is None
    installed = fa.install(fa_view, OWNER)  # the SPI and the keys are still free
    assert fa.paths() == [installed]


def test_conflicting_spi_leaves_the_first_path_intact(nodes: tuple[MemoryBackend, MemoryBackend]) -> None:
    fa, ha = nodes
    before = fa.paths()
    other = dataclasses.replace(mirrored(seed=0x33)[0], peer=OTHER, remote_ts=(IPv4Network("10.0.0.0/8"),))
    with pytest.raises(SaConflict):
        fa.install(other, "s2/FA_HA")  # same spi_in 0x1001
    assert fa.paths() == before
    assert fa.protect(udp(MN, IPv4Address("10.1.2.3"))) is None, "no policy of the refused path"
    routed = fa.protect(udp(MN, CN))
    assert routed is not None and ha.unprotect(routed[1]) == udp(MN, CN)


def test_reinstalling_the_same_path_is_idempotent(nodes: tuple[MemoryBackend, MemoryBackend]) -> None:
    fa, ha = nodes
    first = fa.protect(udp(MN, CN))
    assert first is not None
    again = fa.install(mirrored()[0], OWNER)
    assert fa.paths() == [again]
    second = fa.protect(udp(MN, CN))
    assert second is not None
    assert ha.unprotect(first[1]) and ha.unprotect(second[1]), "the sequence counter was not reset"
    with pytest.raises(SaConflict):
        fa.install(mirrored()[0], "someone-else")


def test_keys_are_never_reused_after_delete(nodes: tuple[MemoryBackend, MemoryBackend]) -> None:
    fa, _ = nodes
    assert fa.delete(OWNER) == 1
    with pytest.raises(SaError, match="already used"):
        fa.install(mirrored()[0], OWNER)  # same keys: GCM nonces would repeat
    fresh = fa.install(mirrored(seed=0x11)[0], OWNER)
    assert fa.paths() == [fresh]


def test_delete_by_owner_and_peer() -> None:
    fa = MemoryBackend(FA)
    to_ha = mirrored()[0]
    to_other = dataclasses.replace(
        mirrored(spi_fa=0x7007, seed=0x50)[0], peer=OTHER, remote_ts=(IPv4Network("10.0.0.0/8"),)
    )
    fa.install(to_ha, OWNER)
    fa.install(to_other, OWNER)
    fa.install(dataclasses.replace(mirrored(spi_fa=0x8008, seed=0x60)[0]), "s9/FA_HA")
    assert [p.owner for p in fa.paths()] == [OWNER, OWNER, "s9/FA_HA"]
    assert fa.delete("nobody") == 0
    assert fa.delete(OWNER, peer=OTHER) == 1
    assert [(p.owner, p.peer) for p in fa.paths()] == [(OWNER, HA), ("s9/FA_HA", HA)]
    assert fa.delete(OWNER) == 1
    assert [p.spi_in for p in fa.paths()] == [0x8008]


def test_unsupported_transform() -> None:
    fa = MemoryBackend(FA, transforms=[EspTransform.AES_CBC_128_HMAC_SHA256])
    with pytest.raises(SaUnsupported):
        fa.install(mirrored(EspTransform.AES_GCM_16_128)[0], OWNER)
    assert fa.paths() == []
    fa.install(mirrored(EspTransform.AES_CBC_128_HMAC_SHA256)[0], OWNER)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"local": HA}, "not for this node"),
        ({"peer": FA}, "peer cannot be the node"),
        ({"spi_in": 255}, "inbound SPI"),
        ({"spi_out": 0}, "outbound SPI"),
        ({"key_in": Secret(bytes(5))}, "inbound key"),
        ({"remote_ts": ()}, "traffic selector"),
    ],
)
def test_invalid_paths_refused(change: dict[str, object], match: str) -> None:
    fa = MemoryBackend(FA)
    with pytest.raises(SaError, match=match):
        fa.install(dataclasses.replace(mirrored()[0], **change), OWNER)  # type: ignore[arg-type]
    assert fa.paths() == []


def test_same_key_both_directions_refused() -> None:
    fa_view = mirrored()[0]
    with pytest.raises(SaError, match="share"):
        MemoryBackend(FA).install(dataclasses.replace(fa_view, key_in=fa_view.key_out), OWNER)


def test_ikev2_paths_use_the_profile_keys() -> None:
    fa_view, ha_view = mirrored()
    fa, ha = MemoryBackend(FA), MemoryBackend(HA)
    ike = {"key_mode": KeyMode.IKEV2, "ike_proposal": "aes256gcm16-prfsha256-x25519", "ike_psk": Secret(b"p" * 32)}
    fa.install(dataclasses.replace(fa_view, **ike), OWNER)  # type: ignore[arg-type]
    ha.install(dataclasses.replace(ha_view, **ike), OWNER)  # type: ignore[arg-type]
    routed = fa.protect(udp(MN, CN))
    assert routed is not None and ha.unprotect(routed[1]) == udp(MN, CN)


def test_close() -> None:
    fa = MemoryBackend(FA)
    fa.install(mirrored()[0], OWNER)
    fa.close()
    for call in (lambda: fa.paths(), lambda: fa.install(mirrored(seed=9)[0], OWNER), lambda: fa.protect(udp(MN, CN))):
        with pytest.raises(SaError, match="closed"):
            call()


def test_installed_path_hides_keys() -> None:
    installed = MemoryBackend(FA).install(mirrored()[0], OWNER)
    assert isinstance(installed, InstalledPath)
    assert (installed.spi_in, installed.spi_out, installed.peer) == (0x1001, 0x2002, HA)
    text = repr(installed)
    assert "redacted" in text and "000102" not in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        installed.owner = "x"  # type: ignore[misc]
