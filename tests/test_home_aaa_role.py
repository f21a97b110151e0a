"""The home AAA's decisions (roles/home_aaa.py), without sockets or database."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aaa_vpn import keys
from aaa_vpn.model import (
    ClientRole,
    EspTransform,
    Gateway,
    GatewayMode,
    KeyMode,
    QosClass,
    Service,
    Session,
    User,
    VpnRecord,
)
from aaa_vpn.roles import home_plan as home_aaa
from aaa_vpn.roles.home_plan import Rejected, UserContext
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import SPI_MAX, SPI_MIN, PathRole, RejectReason, RequestType
from aaa_vpn.wire.radius_profile import ProfileTemplate, compile_with_digest

FA = IPv4Address("192.0.2.1")
HA = IPv4Address("192.0.2.2")
GW_STATIC = IPv4Address("192.0.2.10")
GW_DYNAMIC = IPv4Address("192.0.2.20")
HOME = IPv4Address("198.51.100.10")


def make_context(records: int = 2, key_mode: KeyMode = KeyMode.MANUAL) -> UserContext:
    user = User(
        nai="mn1@home.example",
        home_agent=HA,
        home_address=HOME,
        mn_aaa_secret=Secret(b"mn-aaa-secret"),
        mn_ha_spi=256,
        mn_ha_key=Secret(bytes(range(16))),
    )
    gateways = {
        "gw-static": Gateway(
            "gw-static", GW_STATIC, GatewayMode.STATIC, (IPv4Network("203.0.113.0/25"),), Secret(b"k" * 16)
        ),
        "gw-dyn": Gateway(
            "gw-dyn", GW_DYNAMIC, GatewayMode.DYNAMIC, (IPv4Network("203.0.113.128/25"),), Secret(b"g" * 16)
        ),
    }
    services = {
        "gold": Service("gold", key_mode=key_mode, esp_transform=EspTransform.AES_GCM_16_256),
        "silver": Service("silver", esp_transform=EspTransform.AES_CBC_128_HMAC_SHA256),
    }
    qos = {"voice": QosClass("voice", dscp=46, rate_kbps=512)}
    all_records = (
        VpnRecord("mn1@home.example", IPv4Network("203.0.113.0/25"), "gw-static", "gold", "voice", id=1),
        VpnRecord("mn1@home.example", IPv4Network("203.0.113.128/25"), "gw-dyn", "silver", None, id=2),
    )
    return UserContext(user, all_records[:records], gateways, services, qos)


def new_session(ctx: UserContext) -> tuple[Session, list[home_aaa.PlannedPath]]:
    return home_aaa.new_session(
        ctx,
        session_id="s1",
        srk=Secret(bytes(32)),
        home_agent=HA,
        care_of=FA,
        now=1000.0,
        lifetime=3600,
        random_bytes=os.urandom,
    )


def test_chap_check_is_plain_radius_chap_of_the_rfc4721_mapping() -> None:
    secret = Secret(b"mn-aaa-secret")
    challenge = bytes(range(1, 17))
    preceding = b"\x01\x00\x07\x08" + bytes(20) + b"\x24\x01\x00\x14\x00\x00\x00\x02"
    chap_password, chap_challenge = home_aaa.mn_aaa_chap_attributes(challenge, preceding, secret)
    # RFC 4721 section 8 (CHAP_SPI), computed independently here:
    authenticator = hashlib.md5(
        challenge[:1] + b"mn-aaa-secret" + hashlib.md5(preceding).digest() + challenge[-237:]
    ).digest()
    assert chap_password == challenge[:1] + authenticator
    assert chap_challenge == hashlib.md5(preceding).digest() + challenge
    assert home_aaa.verify_mn_aaa_chap(chap_password, chap_challenge, secret)
    assert not home_aaa.verify_mn_aaa_chap(chap_password, chap_challenge, Secret(b"wrong"))
    assert not home_aaa.verify_mn_aaa_chap(chap_password[:16], chap_challenge, secret)
    tampered = bytes([chap_password[0] ^ 1]) + chap_password[1:]
    assert not home_aaa.verify_mn_aaa_chap(tampered, chap_challenge, secret)


def test_paths_follow_the_vpn_records() -> None:
    session, paths = new_session(make_context())
    assert [(p.label, p.role, p.a, p.b) for p in paths] == [
        ("fa-ha", PathRole.FA_HA, FA, HA),
        ("ha-gw:192.0.2.10:203.0.113.0/25", PathRole.HA_GW, HA, GW_STATIC),
        ("fa-gw:192.0.2.20:203.0.113.128/25", PathRole.FA_GW, FA, GW_DYNAMIC),
    ]
    assert paths[0].b_ts == (IPv4Network("0.0.0.0/0"),)
    assert paths[0].service.name == "gold"  # the first record's service
    # one ESP SPI per path and receiving node, plus the Mobile IP FA-HA SPI
    assert len(session.spis) == 2 * len(paths) + 1
    for allocation in session.spis:
        if allocation.path.startswith(home_aaa.FA_HA_MIP_LABEL):
            assert 256 <= allocation.spi <= 0xFFFFFFFF
        else:
            assert SPI_MIN <= allocation.spi <= SPI_MAX
    per_node: dict[IPv4Address, list[int]] = {}
    for allocation in session.spis:
        per_node.setdefault(allocation.node, []).append(allocation.spi)
    assert all(len(spis) == len(set(spis)) for spis in per_node.values())


def test_fa_and_ha_views_are_mirror_images() -> None:
    ctx = make_context()
    session, paths = new_session(ctx)
    fa = home_aaa.view_for(session, paths, ClientRole.FA, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    ha = home_aaa.view_for(session, paths, ClientRole.HA, RequestType.HA_REGISTRATION, HA, ctx.user, 3600)
    fa_ha_at_fa = next(p for p in fa.paths if p.role is PathRole.FA_HA)
    fa_ha_at_ha = next(p for p in ha.paths if p.role is PathRole.FA_HA)
    assert (fa_ha_at_fa.local, fa_ha_at_fa.peer) == (FA, HA)
    assert (fa_ha_at_ha.local, fa_ha_at_ha.peer) == (HA, FA)
    assert fa_ha_at_fa.key_out == fa_ha_at_ha.key_in and fa_ha_at_fa.key_in == fa_ha_at_ha.key_out
    assert fa_ha_at_fa.spi_out == fa_ha_at_ha.spi_in and fa_ha_at_fa.spi_in == fa_ha_at_ha.spi_out
    assert fa_ha_at_fa.key_in != fa_ha_at_fa.key_out
    assert len(fa_ha_at_fa.key_in) == EspTransform.AES_GCM_16_256.keymat_length
    assert fa_ha_at_fa.local_ts == fa_ha_at_ha.remote_ts == (IPv4Network(f"{HOME}/32"),)
    assert fa.fa_ha_spi == ha.fa_ha_spi and fa.fa_ha_key == ha.fa_ha_key


def test_least_privilege() -> None:
    ctx = make_context()
    session, paths = new_session(ctx)
    fa = home_aaa.view_for(session, paths, ClientRole.FA, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    aaaf = home_aaa.view_for(session, paths, ClientRole.FOREIGN_AAA, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    proxy = home_aaa.view_for(session, paths, ClientRole.PROXY, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    ha = home_aaa.view_for(session, paths, ClientRole.HA, RequestType.HA_REGISTRATION, HA, ctx.user, 3600)
    gw = home_aaa.view_for(session, paths, ClientRole.GW, RequestType.GW_BINDING, GW_DYNAMIC, ctx.user, 3600)
    # the FA: only paths that end at the FA, no SRK, no MN-HA key
    assert {p.role for p in fa.paths} == {PathRole.FA_HA, PathRole.FA_GW}
    assert all(p.local == FA for p in fa.paths)
    assert fa.session_root_key is None and fa.mn_ha_key is None
    # this project's foreign AAA: the FA's view plus the SRK
    assert aaaf.paths == fa.paths and aaaf.session_root_key == session.session_root_key
    # any other RADIUS proxy (FreeRADIUS, a roaming hub) relays to the FA: the FA's view, no SRK
    assert proxy == fa and proxy.session_root_key is None
    # the HA: its own paths, the gateway side of FA-GW, the SRK and the MN-HA key
    assert sorted((p.role, p.local) for p in ha.paths) == [
        (PathRole.FA_HA, HA),
        (PathRole.HA_GW, HA),
        (PathRole.FA_GW, GW_DYNAMIC),
    ]
    assert ha.session_root_key == session.session_root_key and ha.mn_ha_spi == 256
    # the dynamic gateway: only its FA-GW path
    assert [(p.role, p.local, p.peer) for p in gw.paths] == [(PathRole.FA_GW, GW_DYNAMIC, FA)]
    assert gw.session_root_key is None and gw.fa_ha_key is None


def test_ike_service_gets_a_shared_psk() -> None:
    ctx = make_context(key_mode=KeyMode.IKEV2)
    session, paths = new_session(ctx)
    fa = home_aaa.view_for(session, paths, ClientRole.FA, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    ha = home_aaa.view_for(session, paths, ClientRole.HA, RequestType.HA_REGISTRATION, HA, ctx.user, 3600)
    at_fa = next(p for p in fa.paths if p.role is PathRole.FA_HA)
    at_ha = next(p for p in ha.paths if p.role is PathRole.FA_HA)
    assert at_fa.ike_psk is not None and at_fa.ike_psk == at_ha.ike_psk
    assert at_fa.ike_proposal == "aes256gcm16-prfsha256-x25519"
    assert at_fa.ike_psk == keys.derive_ike_psk(session.session_root_key, b"fa-ha", FA, HA, 1)


def test_user_without_records_gets_the_default_fa_ha_path() -> None:
    ctx = make_context(records=0)
    _session, paths = new_session(ctx)
    assert [p.label for p in paths] == ["fa-ha"] and paths[0].service is home_aaa.DEFAULT_SERVICE


def test_wrong_home_agent_and_missing_home_address_are_rejected() -> None:
    ctx = make_context()
    with pytest.raises(Rejected) as info:
        home_aaa.new_session(ctx, "s", Secret(bytes(32)), IPv4Address("192.0.2.99"), FA, 0.0, 60, os.urandom)
    assert info.value.reason is RejectReason.BAD_REQUEST


def test_too_many_paths_is_a_clear_rejection() -> None:
    ctx = make_context()
    records = tuple(
        VpnRecord("mn1@home.example", IPv4Network(f"10.0.{i}.0/24"), "gw-static", "gold", None, id=i)
        for i in range(1, 40)
    )
    crowded = UserContext(ctx.user, records, ctx.gateways, ctx.services, ctx.qos)
    with pytest.raises(Rejected) as info:
        new_session(crowded)
    assert info.value.reason is RejectReason.PROFILE_TOO_LARGE


def test_spi_allocation_keeps_existing_and_avoids_duplicates() -> None:
    ctx = make_context()
    session, paths = new_session(ctx)
    again = home_aaa.allocate_spis(paths, (FA, HA), session.spis, os.urandom)
    assert again == session.spis
    # a random source that repeats itself still yields distinct SPIs per node
    repeating = itertools.cycle(
        [
            b"\x00\x00\x01\x00",
            b"\x00\x00\x01\x00",
            b"\x00\x00\x02\x00",
            b"\x00\x00\x03\x00",
            b"\x00\x00\x04\x00",
            b"\x00\x00\x05\x00",
            b"\x00\x00\x06\x00",
            b"\x00\x00\x07\x00",
        ]
    )
    spis = home_aaa.allocate_spis(paths, (FA, HA), (), lambda n: next(repeating))
    per_node: dict[IPv4Address, list[int]] = {}
    for allocation in spis:
        per_node.setdefault(allocation.node, []).append(allocation.spi)
    assert all(len(v) == len(set(v)) for v in per_node.values())


def test_path_labels_are_derivable_from_a_view() -> None:
    # A foreign AAA re-deriving a moved path's keys only has the FA's view:
    # the role, the gateway end and the correspondent selector.
    ctx = make_context()
    session, paths = new_session(ctx)
    fa = home_aaa.view_for(session, paths, ClientRole.FA, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    for view in fa.paths:
        gateway = view.peer if view.role is not PathRole.FA_HA else None
        correspondent = view.remote_ts[0] if view.role is not PathRole.FA_HA else None
        label = home_aaa.path_label(view.role, gateway, correspondent).encode()
        expected = keys.derive_sa_key(
            session.session_root_key, label, view.peer, view.local, session.epoch, view.esp_transform.keymat_length
        )
        assert view.key_in == expected


def test_only_the_ha_gets_binding_keys_for_its_gateways() -> None:
    ctx = make_context()
    session, paths = new_session(ctx)
    ha = home_aaa.view_for(session, paths, ClientRole.HA, RequestType.HA_REGISTRATION, HA, ctx.user, 3600)
    fa = home_aaa.view_for(session, paths, ClientRole.FA, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    gw = home_aaa.view_for(session, paths, ClientRole.GW, RequestType.GW_BINDING, GW_DYNAMIC, ctx.user, 3600)
    for view in ha.paths:
        if view.role is PathRole.FA_HA:
            assert view.binding_key is None
            continue
        gateway = GW_STATIC if view.role is PathRole.HA_GW else GW_DYNAMIC
        provisioned = ctx.gateways["gw-static" if gateway == GW_STATIC else "gw-dyn"].gateway_key
        assert view.binding_key == keys.derive_binding_key(provisioned, HA, gateway)
    assert all(p.binding_key is None for p in fa.paths + gw.paths)
    # another HA would get another key
    assert keys.derive_binding_key(Secret(b"g" * 16), HA, GW_DYNAMIC) != keys.derive_binding_key(
        Secret(b"g" * 16), IPv4Address("192.0.2.3"), GW_DYNAMIC
    )


def test_a_foreign_aaa_moving_a_view_agrees_with_the_home_aaa() -> None:
    # Flow C: the foreign AAA moves the FA's view to the new FA from its cache;
    # the home AAA moves the session when the HA asks. Same SPIs, same keys.
    ctx = make_context(key_mode=KeyMode.IKEV2)
    session, paths = new_session(ctx)
    old = home_aaa.view_for(session, paths, ClientRole.FOREIGN_AAA, RequestType.FA_REGISTRATION, FA, ctx.user, 3600)
    new_fa = IPv4Address("192.0.2.99")
    by_aaaf = home_aaa.moved_view(old, new_fa, session.epoch + 1, 3000)
    new_paths = home_aaa.plan_paths(ctx, HOME, HA, new_fa)
    moved = home_aaa.move_session(session, new_paths, new_fa, 1000.0, 3600, os.urandom, epoch=session.epoch + 1)
    by_aaah = home_aaa.view_for(moved, new_paths, ClientRole.FA, RequestType.FA_REGISTRATION, new_fa, ctx.user, 3000)
    assert by_aaaf.paths == by_aaah.paths
    assert (by_aaaf.fa_ha_spi, by_aaaf.fa_ha_key) == (by_aaah.fa_ha_spi, by_aaah.fa_ha_key)
    assert (by_aaaf.epoch, by_aaaf.care_of_address) == (2, new_fa)
    # nothing repeats from the old FA's view, and the stationary path kept its SPIs
    assert not {p.spi_in for p in old.paths} & {p.spi_in for p in by_aaaf.paths}
    assert not {p.key_in.value for p in old.paths} & {p.key_in.value for p in by_aaaf.paths}
    stationary = {a.path: a.spi for a in session.spis if a.path.startswith("ha-gw:")}
    assert stationary and all(a.spi == stationary[a.path] for a in moved.spis if a.path in stationary)
    # and the HA's view after the move mirrors the new FA's
    ha = home_aaa.view_for(moved, new_paths, ClientRole.HA, RequestType.HA_REGISTRATION, HA, ctx.user, 3000)
    at_ha = next(p for p in ha.paths if p.role is PathRole.FA_HA)
    at_fa = next(p for p in by_aaaf.paths if p.role is PathRole.FA_HA)
    assert (at_ha.spi_in, at_ha.key_in, at_ha.peer) == (at_fa.spi_out, at_fa.key_out, new_fa)


# -- the compiled view: skeletons give the same bytes as compiling the view -------------------------

_REQUESTERS = [
    (ClientRole.FA, RequestType.FA_REGISTRATION, None),
    (ClientRole.FOREIGN_AAA, RequestType.FA_REGISTRATION, None),
    (ClientRole.PROXY, RequestType.FA_REGISTRATION, None),
    (ClientRole.HA, RequestType.HA_REGISTRATION, HA),
    (ClientRole.GW, RequestType.GW_BINDING, GW_STATIC),
    (ClientRole.GW, RequestType.GW_BINDING, GW_DYNAMIC),
]


@settings(max_examples=60, deadline=None)
@given(
    records=st.integers(0, 2),
    key_mode=st.sampled_from(KeyMode),
    srk=st.binary(min_size=32, max_size=32),
    moves=st.integers(0, 3),
    requester=st.sampled_from(_REQUESTERS),
    lifetime=st.integers(0, 2**32 - 1),
    salt_base=st.integers(0, 0xFFFF),
    secret=st.binary(min_size=1, max_size=32),
)
def test_the_view_template_is_the_compiled_view(
    records: int,
    key_mode: KeyMode,
    srk: bytes,
    moves: int,
    requester: tuple[ClientRole, RequestType, IPv4Address | None],
    lifetime: int,
    salt_base: int,
    secret: bytes,
) -> None:
    ctx = make_context(records, key_mode)
    session, paths = home_aaa.new_session(ctx, "s1", Secret(srk), HA, FA, 1000.0, 3600, os.urandom)
    fa = FA
    for n in range(moves):  # each move leaves a forwarding path from the previous FA
        fa = IPv4Address(f"192.0.2.{100 + n}")
        paths = home_aaa.plan_paths(ctx, HOME, HA, fa)
        session = home_aaa.move_session(session, paths, fa, 1000.0 + n, 3600, os.urandom, rekey=n == 2)
    role, request_type, node = requester
    node = fa if node is None else node
    view = home_aaa.view_for(session, paths, role, request_type, node, ctx.user, lifetime)
    expected, expected_digest = compile_with_digest(view)
    template, digest, count = home_aaa.view_template(session, paths, role, request_type, node, ctx.user)
    assert digest == expected_digest == view.digest
    assert count == len(view.paths)
    # what the one pass of _with_digest worked out, against the long way
    rebuilt = ProfileTemplate(template.parts)
    assert (template.length, template.secrets) == (rebuilt.length, rebuilt.secrets)
    assert template._flat == rebuilt._flatten()
    authenticator = hashlib.sha256(secret).digest()[:16]
    assert template.render_bytes(lifetime, secret, authenticator, salt_base=salt_base) == b"".join(
        expected.render(lifetime, secret, authenticator, salt_base=salt_base)
    )
    # asked twice (the skeletons now cached), the same again
    again, again_digest, _ = home_aaa.view_template(session, paths, role, request_type, node, ctx.user)
    assert again_digest == digest
    assert again.render_bytes(lifetime, secret, authenticator, salt_base=salt_base) == template.render_bytes(
        lifetime, secret, authenticator, salt_base=salt_base
    )


_HOMES = ["198.51.100.10", "10.1.2.3", "198.51.100.254", "100.64.0.1"]


@settings(max_examples=60, deadline=None)
@given(
    records=st.integers(0, 2),
    key_mode=st.sampled_from(KeyMode),
    srks=st.lists(st.binary(min_size=32, max_size=32), min_size=3, max_size=3, unique=True),
    homes=st.lists(st.sampled_from(_HOMES), min_size=3, max_size=3),
    moves=st.integers(0, 3),
    requester=st.sampled_from(_REQUESTERS),
    lifetime=st.integers(0, 2**32 - 1),
    secret=st.binary(min_size=1, max_size=32),
)
def test_views_of_one_shape_are_filled_in_from_one_compiled_view(
    records: int,
    key_mode: KeyMode,
    srks: list[bytes],
    homes: list[str],
    moves: int,
    requester: tuple[ClientRole, RequestType, IPv4Address | None],
    lifetime: int,
    secret: bytes,
) -> None:
    """Three users with the same VPN records at the same FA and HA but their
    own home address, MN-HA SPI and key, root key, session id and SPIs: the
    third view (and the second's, once its shape was seen) comes from the
    view compiled with stand-ins, and is byte for byte the long way's."""
    home_aaa._OPEN_VIEWS.clear()
    base = make_context(records, key_mode)
    role, request_type, node = requester
    authenticator = hashlib.sha256(secret).digest()[:16]
    for n, (srk, home) in enumerate(zip(srks, homes, strict=True)):
        user = dataclasses.replace(
            base.user,
            nai=f"mn{n}@home.example",
            home_address=IPv4Address(home),
            mn_ha_spi=300 + n,
            mn_ha_key=Secret(bytes([n + 1]) * 16),
        )
        ctx = dataclasses.replace(base, user=user)
        session_id = f"session-{n}" * (n + 1)  # of different lengths
        session, paths = home_aaa.new_session(ctx, session_id, Secret(srk), HA, FA, 1000.0, 3600, os.urandom)
        fa = FA
        for m in range(moves):
            fa = IPv4Address(f"192.0.2.{100 + m}")
            paths = home_aaa.plan_paths(ctx, user.home_address, HA, fa)
            session = home_aaa.move_session(session, paths, fa, 1000.0 + m, 3600, os.urandom, rekey=m == 2)
        at = fa if node is None else node
        view = home_aaa.view_for(session, paths, role, request_type, at, user, lifetime)
        expected, expected_digest = compile_with_digest(view)
        template, digest, count = home_aaa.view_template(session, paths, role, request_type, at, user)
        assert digest == expected_digest == view.digest
        assert count == len(view.paths)
        assert template.length == expected.length and template.secrets == expected.secrets
        assert template.render_bytes(lifetime, secret, authenticator, salt_base=n) == b"".join(
            expected.render(lifetime, secret, authenticator, salt_base=n)
        )
    compiled = [v for v in home_aaa._OPEN_VIEWS.values() if isinstance(v, home_aaa._Compiled)]
    assert len(compiled) == 1, home_aaa._OPEN_VIEWS  # one shape, compiled at its second sighting
