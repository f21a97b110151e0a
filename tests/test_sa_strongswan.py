"""The strongswan SA backend: names, initiator rules and lifetimes as units; then
real charons (charon-systemd 5.9.8, kernel-libipsec) in network namespaces that
each test makes and removes (``tests/sswan_lab.py``): both ends of a path up,
traffic through the tunnel seen only as ESP-in-UDP on the wire, deletion on
both ends, handoff replacement that leaves other owners and peers alone, every
failure mode leaving nothing behind, restart recovery and rekeying within the
path's lifetime."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import vici

from aaa_vpn.model import EspTransform, KeyMode
from aaa_vpn.roles.agent import InstallPaths
from aaa_vpn.sa import InstalledPath, SaBackend, SaConflict, SaError, SaUnsupported
from aaa_vpn.sa.charon import Charon, CharonError, render_config
from aaa_vpn.sa.strongswan import (
    AuthenticationFailed,
    CharonUnavailable,
    IkeSaState,
    PeerUnreachable,
    PendingInstall,
    ProposalMismatch,
    SideTableCorrupt,
    StrongSwanBackend,
    StrongSwanError,
    Vici,
    connection_name,
    default_initiator,
    ike_identity,
    initiator_for,
    lifetimes,
    parse_connection_name,
)
from aaa_vpn.secret import Secret
from aaa_vpn.service.agents import SaExecutor
from aaa_vpn.wire.profile import PathProfile, PathRole
from tests.sswan_lab import Lab, LabNode, tshark_fields, wait_until

ANY = IPv4Network("0.0.0.0/0")
MN1 = IPv4Address("198.51.100.10")  # mobile nodes' home addresses, on the FAs' loopback
MN2 = IPv4Address("198.51.100.11")
CN = IPv4Address("203.0.113.1")  # a correspondent, on the HA's loopback
CN_NET = IPv4Network("203.0.113.0/24")
PROPOSAL = "aes256gcm16-prfsha256-x25519"  # the model's default IKE proposal


def host(address: IPv4Address) -> IPv4Network:
    return IPv4Network(f"{address}/32")


def views(
    role: PathRole,
    near: IPv4Address,
    far: IPv4Address,
    near_ts: IPv4Network,
    far_ts: IPv4Network,
    spi_near: int,
    spi_far: int,
    seed: int = 1,
    transform: EspTransform = EspTransform.AES_GCM_16_128,
    lifetime: int = 600,
) -> tuple[PathProfile, PathProfile]:
    """The two mirrored views of one path, as the home AAA lays it out: the
    *near* end (nearer the mobile node, installs first) has the node's
    selector as its local one. ``spi_near`` is the SPI the near end receives on."""
    n = transform.keymat_length
    to_far, to_near = Secret(bytes([seed] * n)), Secret(bytes([seed + 0x80] * n))
    near_view = PathProfile(
        role=role,
        local=near,
        peer=far,
        local_ts=(near_ts,),
        remote_ts=(far_ts,),
        key_mode=KeyMode.IKEV2,
        esp_transform=transform,
        spi_in=spi_near,
        spi_out=spi_far,
        key_in=to_near,
        key_out=to_far,
        lifetime=lifetime,
        ike_proposal=PROPOSAL,
        ike_psk=Secret(f"psk-{seed}-0123456789abcdef0123456789".encode()),
    )
    far_view = dataclasses.replace(
        near_view,
        local=far,
        peer=near,
        local_ts=(far_ts,),
        remote_ts=(near_ts,),
        spi_in=spi_far,
        spi_out=spi_near,
        key_in=to_far,
        key_out=to_near,
    )
    return near_view, far_view


def fa_ha(
    fa: IPv4Address, ha: IPv4Address, mn: IPv4Address, spi_fa: int, spi_ha: int, **kw: Any
) -> tuple[PathProfile, PathProfile]:
    """(FA's view, HA's view) of an FA-HA path for the node ``mn``."""
    return views(PathRole.FA_HA, fa, ha, host(mn), ANY, spi_fa, spi_ha, **kw)


# -- units: no daemon ------------------------------------------------------------------------


def test_connection_names_carry_owner_peer_and_spi() -> None:
    peer = IPv4Address("192.0.2.7")
    for owner in ("s1/FA_HA", "s1/FA_HA/forward", "odd: 100% ü", "a" * 150):
        name = connection_name(owner, peer, 0xABC)
        assert name.isascii() and ":" not in name.split(":", 1)[1].rsplit(":", 2)[0]
        parsed = parse_connection_name(name)
        assert parsed is not None and (parsed.owner, parsed.peer, parsed.spi_in) == (owner, peer, 0xABC)
    assert connection_name("s1/FA_HA", peer, 0x1001) == "aaa_vpn:s1%2FFA_HA:192.0.2.7:00001001"
    for other in ("gw", "aaa_vpn:x:192.0.2.7", "aaa_vpn:x:300.1.1.1:00000001", "aaa_vpnx:s:192.0.2.7:00000001"):
        assert parse_connection_name(other) is None
    with pytest.raises(SaError, match="owner too long"):
        connection_name("x" * 300, peer, 1)
    with pytest.raises(SaError):
        connection_name("", peer, 1)


def test_identities_are_per_path_and_mirror() -> None:
    fa, ha = fa_ha(IPv4Address("192.0.2.2"), IPv4Address("192.0.2.1"), MN1, 0x1001, 0x2002)
    assert ike_identity(fa.local, fa.spi_in) == ike_identity(ha.peer, ha.spi_out) == "00001001@192.0.2.2"
    assert ike_identity(ha.local, ha.spi_in) == ike_identity(fa.peer, fa.spi_out) == "00002002@192.0.2.1"


def test_lifetimes_never_exceed_the_path_lifetime() -> None:
    assert lifetimes(600, initiator=True) == lifetimes(600, True)
    t = lifetimes(600, True)
    assert (t.child_life, t.child_rekey, t.ike_rekey, t.ike_over, t.rand) == (600, 540, 540, 60, 30)
    r = lifetimes(600, False)  # the responder only expires; the initiator rekeys
    assert (r.child_life, r.child_rekey, r.ike_rekey) == (600, 0, 0)
    for lifetime in range(1, 5000):
        t = lifetimes(lifetime, True)
        assert t.child_life == lifetime
        assert t.child_rekey == 0 or t.child_rekey - t.rand > 0
        assert t.child_rekey < lifetime
        # the IKE_SA is deleted at rekey - jitter + over_time, at the latest rekey + over
        assert t.ike_rekey == 0 or t.ike_rekey + t.ike_over <= lifetime
    assert lifetimes(1, True).child_rekey == 0  # too short to rekey: it just expires


def test_default_initiator_is_the_end_that_installs_second() -> None:
    fa, ha, gw, nfa = (IPv4Address(f"192.0.2.{i}") for i in (9, 1, 200, 3))
    layouts = [
        views(PathRole.FA_HA, fa, ha, host(MN1), ANY, 0x101, 0x102),  # FA first, HA initiates
        views(PathRole.HA_GW, ha, gw, host(MN1), CN_NET, 0x103, 0x104),  # HA first, GW initiates
        views(PathRole.FA_GW, fa, gw, host(MN1), CN_NET, 0x105, 0x106),  # FA first, GW initiates
        views(PathRole.FA_FA, nfa, fa, host(MN1), ANY, 0x107, 0x108),  # new FA first, previous FA initiates
    ]
    for near, far in layouts:
        assert (default_initiator(near), default_initiator(far)) == (False, True), near.role
    # Both selectors single hosts: the higher address initiates, so exactly one end does.
    a, b = views(PathRole.HA_GW, ha, gw, host(MN1), host(CN), 0x109, 0x10A)
    assert [default_initiator(a), default_initiator(b)] == [False, True]
    a, b = views(PathRole.HA_GW, gw, ha, host(MN1), host(CN), 0x109, 0x10A)
    assert [default_initiator(a), default_initiator(b)] == [True, False]


def test_initiator_for_each_agent() -> None:
    fa, ha, gw, nfa = (IPv4Address(f"192.0.2.{i}") for i in (9, 1, 200, 3))
    cases = [  # (near view's agent, far view's agent, views): the far end initiates
        ("fa", "ha", views(PathRole.FA_HA, fa, ha, host(MN1), ANY, 0x101, 0x102)),
        ("ha", "gw", views(PathRole.HA_GW, ha, gw, host(MN1), host(CN), 0x103, 0x104)),
        ("fa", "gw", views(PathRole.FA_GW, fa, gw, host(MN1), host(CN), 0x105, 0x106)),
        ("fa", "fa", views(PathRole.FA_FA, nfa, fa, host(MN1), ANY, 0x107, 0x108)),
    ]
    for near_kind, far_kind, (near, far) in cases:
        assert initiator_for(near_kind)(near) is False, near.role  # type: ignore[arg-type]
        assert initiator_for(far_kind)(far) is True, far.role  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        initiator_for("mn")  # type: ignore[arg-type]


def test_manual_and_incomplete_paths_are_refused_before_charon(tmp_path: Path) -> None:
    fa, _ha = fa_ha(IPv4Address("192.0.2.2"), IPv4Address("192.0.2.1"), MN1, 0x1001, 0x2002)
    backend = StrongSwanBackend(fa.local, tmp_path / "no-charon.vici")
    assert isinstance(backend, SaBackend)
    with pytest.raises(SaUnsupported, match="IKEv2: a MANUAL path"):
        backend.install(dataclasses.replace(fa, key_mode=KeyMode.MANUAL), "s1")
    with pytest.raises(SaError, match="pre-shared key"):
        backend.install(dataclasses.replace(fa, ike_psk=None), "s1")
    with pytest.raises(SaError, match="IKE proposal"):
        backend.install(dataclasses.replace(fa, ike_proposal=None), "s1")
    with pytest.raises(SaError, match="not for this node"):
        backend.install(dataclasses.replace(fa, local=MN2), "s1")


def test_missing_daemon_is_a_clear_error(tmp_path: Path) -> None:
    fa, _ha = fa_ha(IPv4Address("192.0.2.2"), IPv4Address("192.0.2.1"), MN1, 0x1001, 0x2002)
    sock = tmp_path / "charon.vici"
    backend = StrongSwanBackend(fa.local, sock)
    for call in (lambda: backend.install(fa, "s1"), backend.paths, lambda: backend.delete("s1")):
        with pytest.raises(CharonUnavailable, match=f"cannot reach charon at {sock}") as info:
            call()
        assert isinstance(info.value, SaError)
    # A socket file nobody listens on (a stale one): the same.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    with pytest.raises(CharonUnavailable, match="Connection refused"):
        backend.paths()
    assert not backend.state_file.exists()
    backend.close()
    with pytest.raises(SaError, match="closed"):
        backend.paths()


# -- real charons in network namespaces --------------------------------------------------------


def _need_root_and_tools(require_tool: Callable[[str], str]) -> None:
    for tool in ("charon-systemd", "swanctl", "ip"):
        require_tool(tool)
    if not os.path.exists("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"):
        require_tool("kernel-libipsec plugin (libcharon-extra-plugins)")
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)


# -- the daemon ------------------------------------------------------------------------------


def test_config_puts_libipsec_first_and_logs_no_keys_by_default(tmp_path: Path) -> None:
    conf = render_config(tmp_path / "s.vici", tmp_path / "c.log")
    assert conf.index("kernel-libipsec") < conf.index("kernel-netlink")
    assert f"socket = unix://{tmp_path / 's.vici'}" in conf
    assert "allow_peer_ts = yes" in conf and "fwmark = !0x42" in conf and "fwmark = 0x42" in conf
    assert "chd" not in conf
    assert "chd = 4" in render_config(tmp_path / "s.vici", tmp_path / "c.log", log_keys=True)


def test_a_daemon_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    charon = Charon(tmp_path / "c", binary="/bin/false")
    with pytest.raises(CharonError, match="exited with status 1 while starting"):
        charon.start()
    assert charon.pid is None and charon.stop() is None


@pytest.mark.netns
@pytest.mark.strongswan
def test_charon_runs_in_its_namespace_and_stops_by_pid(require_tool: Callable[[str], str]) -> None:
    _need_root_and_tools(require_tool)
    with Lab(1, start_charons=False) as lab:
        node = lab[0]
        charon = node.charon
        charon.directory.mkdir(parents=True)
        stale = socket.socket(socket.AF_UNIX)  # a socket left by a daemon that died
        stale.bind(str(charon.vici_socket))
        stale.close()
        charon.start()
        pid = charon.pid
        assert pid is not None and charon.running
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{node.netns}").st_ino
        assert os.readlink(f"/proc/{pid}/exe") == "/usr/sbin/charon-systemd"
        with Vici(charon.vici_socket, 5.0) as v:
            assert v.version().startswith("charon-systemd 5.")
        assert "ipsec0" in node.run("ip", "-o", "link").stdout  # kernel-libipsec's TUN device, in the namespace
        assert "loaded plugins: charon-systemd" in charon.log_path.read_text()
        with pytest.raises(CharonError, match="already started"):
            charon.start()
        assert charon.stop() == 0  # SIGTERM: a clean exit
        assert not os.path.exists(f"/proc/{pid}") and not charon.vici_socket.exists()
        assert charon.stop() is None


@pytest.fixture
def lab2(require_tool: Callable[[str], str]) -> Iterator[Lab]:
    """Two nodes: [0] = HA (192.0.2.1, CN on lo), [1] = FA (192.0.2.2, MN1 and MN2 on lo)."""
    _need_root_and_tools(require_tool)
    with Lab(2) as lab:
        lab[0].add_address(f"{CN}/24")
        lab[1].add_address(f"{MN1}/32")
        lab[1].add_address(f"{MN2}/32")
        yield lab


@pytest.fixture
def lab3(require_tool: Callable[[str], str]) -> Iterator[Lab]:
    """Three nodes: [0] = HA, [1] = FA1, [2] = FA2 (also a gateway).

    kernel-libipsec routes a CHILD_SA's traffic only from an address of the node
    inside its local selector, so the FAs carry the nodes' home addresses (as
    visitors' host routes would be), the HA MN1 (its HA-GW path's local end)
    and node 2 the correspondent network (the gateway's)."""
    _need_root_and_tools(require_tool)
    with Lab(3) as lab:
        lab[0].add_address(f"{MN1}/32")
        lab[2].add_address(f"{CN}/24")
        for fa in (lab[1], lab[2]):
            fa.add_address(f"{MN1}/32")
            fa.add_address(f"{MN2}/32")
        yield lab


def children(backend: StrongSwanBackend, owner: str | None = None, peer: IPv4Address | None = None) -> list[str]:
    """'<state>' of every CHILD_SA of the owner's connections."""
    return [c.state for sa in backend.sas(owner, peer) for c in sa.children]


def key(sa: IkeSaState) -> tuple[object, ...]:
    """An IKE_SA and its CHILD_SAs, without the seconds left (which tick)."""
    return (sa.name, sa.unique_id, sa.state, tuple((c.spi_in, c.spi_out, c.state) for c in sa.children))


def only_sa(backend: StrongSwanBackend, owner: str, peer: IPv4Address) -> IkeSaState:
    (sa,) = backend.sas(owner, peer)
    assert sa.state == "ESTABLISHED" and len(sa.installed) == 1, sa
    return sa


def leftovers(node: LabNode) -> tuple[list[str], list[str], list[str]]:
    """What this node's charon holds of ours: connections, shared keys, IKE_SAs."""
    with Vici(node.charon.vici_socket, 5.0) as v:
        conns = [n for n in v.connection_names() if n.startswith("aaa_vpn:")]
        keys = [k for k in v.shared_key_ids() if k.startswith("aaa_vpn:")]
        sas = [sa.name for sa in v.ike_sas() if sa.name.startswith("aaa_vpn:")]
    return conns, keys, sas


@pytest.mark.netns
@pytest.mark.strongswan
def test_both_ends_up_traffic_only_esp_in_udp_delete_both(lab2: Lab, require_tool: Callable[[str], str]) -> None:
    require_tool("tcpdump")
    require_tool("tshark")
    require_tool("ping")
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002)
    fa, ha = fa_node.backend(), ha_node.backend()

    fa.install(fa_view, "s1/FA_HA")  # the responder: loaded, nothing negotiated yet
    assert fa.sas() == [] and [p.owner for p in fa.paths()] == ["s1/FA_HA"]
    ha.install(ha_view, "s1/FA_HA")  # the initiator: returns with the CHILD_SA installed

    ha_sa, fa_sa = only_sa(ha, "s1/FA_HA", fa_node.address), only_sa(fa, "s1/FA_HA", ha_node.address)
    assert ha_sa.initiator and not fa_sa.initiator
    assert (ha_sa.local_id, ha_sa.remote_id) == ("00002002@192.0.2.1", "00001001@192.0.2.2")
    (ha_child,), (fa_child,) = ha_sa.installed, fa_sa.installed
    assert (ha_child.spi_in, ha_child.spi_out) == (fa_child.spi_out, fa_child.spi_in)
    assert ha_child.encap and ha_child.encryption == "AES_GCM_16"
    assert (ha_child.local_ts, ha_child.remote_ts) == (("0.0.0.0/0",), (f"{MN1}/32",))
    # swanctl, independently of our VICI layer, sees the same.
    for node in (ha_node, fa_node):
        listing = node.run("swanctl", "--list-sas", "--uri", f"unix://{node.charon.vici_socket}").stdout
        assert "INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128" in listing, listing

    capture = ha_node.capture()
    ping = fa_node.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", str(MN1), str(CN), check=False)
    pcap = capture.stop()
    assert ping.returncode == 0, ping.stdout + ping.stderr
    frames = tshark_fields(pcap, ["frame.protocols", "ip.src", "ip.dst", "udp.srcport", "udp.dstport", "esp.spi"], "ip")
    assert frames, "nothing captured"
    ends = {str(fa_node.address), str(ha_node.address)}
    between = [f for f in frames if {f[1], f[2]} == ends]  # (other frames: e.g. IGMP reports of the veth)
    esp = [f for f in between if f[0].endswith(":esp")]
    assert len(esp) >= 6, frames  # 3 requests + 3 replies
    for protocols, _src, _dst, sport, dport, _spi in between:
        assert protocols.startswith("eth:ethertype:ip:udp:"), protocols
        assert protocols.endswith((":esp", ":isakmp")), protocols
        assert (sport, dport) in (("4500", "4500"), ("500", "500"))
    spis = {int(f[5], 16) for f in esp}
    assert spis == {ha_child.spi_in, ha_child.spi_out}, "ESP on the wire is not our CHILD_SA's"
    inner = {str(MN1), str(CN)}
    assert not [f for f in frames if inner & {*f[1].split(","), *f[2].split(",")}], "an inner address in clear"
    assert not any("icmp" in f[0] for f in frames), "an inner packet went in clear"
    # Charon's counters, as accounting reads them: the three pings each way (84-octet inner packets).
    counted = {c.direction.value: c for c in fa.counters("s1/FA_HA")}
    assert set(counted) == {"in", "out"} and counted["out"].spi == fa_child.spi_out
    assert counted["out"].packets >= 3 and counted["in"].packets >= 3, counted
    assert counted["out"].octets >= 3 * 84 and counted["in"].octets >= 3 * 84, counted
    assert fa.counters("another/owner") == []

    # The initiator deletes: both ends lose the SA; the FA keeps its loaded end until it deletes too.
    assert ha.delete("s1/FA_HA") == 1
    assert ha.sas() == [] and ha.paths() == []
    wait_until(lambda: fa.sas() == [], what="the FA to process the DELETE")
    assert leftovers(ha_node) == ([], [], [])
    assert [p.owner for p in fa.paths()] == ["s1/FA_HA"]
    assert fa.delete("s1/FA_HA") == 1 and fa.delete("s1/FA_HA") == 0
    assert leftovers(fa_node) == ([], [], []) and fa.paths() == []


@pytest.mark.netns
@pytest.mark.strongswan
def test_identical_reinstall_is_a_noop_and_spi_conflicts(lab2: Lab) -> None:
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002)
    fa, ha = fa_node.backend(), ha_node.backend()
    fa.install(fa_view, "s1/FA_HA")
    first = ha.install(ha_view, "s1/FA_HA")
    before = only_sa(ha, "s1/FA_HA", fa_node.address)

    again = ha.install(dataclasses.replace(ha_view), "s1/FA_HA")  # e.g. a retransmitted Access-Accept
    assert again == first
    assert [key(sa) for sa in ha.sas()] == [key(before)], "an identical re-install must not negotiate again"
    assert fa.install(fa_view, "s1/FA_HA").path == fa_view

    # The inbound SPI in use: a changed path (new key) or another owner is a conflict; nothing changes.
    changed = dataclasses.replace(ha_view, ike_psk=Secret(b"another-psk-0123456789abcdef012345"))
    with pytest.raises(SaConflict, match="0x00002002"):
        ha.install(changed, "s1/FA_HA")
    with pytest.raises(SaConflict):
        ha.install(ha_view, "s2/FA_HA")
    with pytest.raises(SaConflict):
        ha.install(dataclasses.replace(ha_view, remote_ts=(host(MN2),)), "s1/FA_HA")
    assert [key(sa) for sa in ha.sas()] == [key(before)] and [p.owner for p in ha.paths()] == ["s1/FA_HA"]


@pytest.mark.netns
@pytest.mark.strongswan
def test_handoff_replaces_exactly_the_affected_connection(lab3: Lab) -> None:
    ha_node, fa1_node, fa2_node = lab3[0], lab3[1], lab3[2]
    ha, fa1, fa2 = ha_node.backend(), fa1_node.backend(), fa2_node.backend()
    HA, FA1, FA2 = ha_node.address, fa1_node.address, fa2_node.address
    # s1 at FA1, with a stationary HA-GW path to node 2 (as a gateway); s2 also at FA1.
    s1_fa1, s1_ha1 = fa_ha(FA1, HA, MN1, 0x1101, 0x1201, seed=1)
    s2_fa1, s2_ha1 = fa_ha(FA1, HA, MN2, 0x1102, 0x1202, seed=2)
    s1_ha_gw, s1_gw = views(PathRole.HA_GW, HA, FA2, host(MN1), CN_NET, 0x1203, 0x1303, seed=3)
    fa1.install(s1_fa1, "s1")
    fa1.install(s2_fa1, "s2")
    ha.install(s1_ha1, "s1")  # HA initiates FA-HA
    ha.install(s2_ha1, "s2")
    ha.install(s1_ha_gw, "s1")  # the HA responds on HA-GW ...
    fa2.install(s1_gw, "s1")  # ... the gateway initiates
    untouched = {
        "s2 via FA1": only_sa(ha, "s2", FA1),
        "s1 to the GW": only_sa(ha, "s1", FA2),
    }
    assert len(ha.sas()) == 3 and len(fa1.sas()) == 2

    # s1 moves to FA2: the HA removes what it has of s1 toward FA1, installs s1 toward FA2.
    s1_fa2, s1_ha2 = fa_ha(FA2, HA, MN1, 0x1401, 0x1501, seed=4)
    assert ha.delete("s1", FA1) == 1
    fa2.install(s1_fa2, "s1")
    ha.install(s1_ha2, "s1")

    assert ha.sas("s1", FA1) == [], "the old SA must be gone on both ends"
    wait_until(lambda: fa1.sas("s1") == [], what="FA1 to process the DELETE (delete does not wait for it)")
    for what, sa in untouched.items():  # same IKE_SA, same CHILD_SA: not renegotiated
        assert key(sa) in [key(s) for s in ha.sas(parse_owner(sa), IPv4Address(sa.remote_host))], what
    assert only_sa(fa1, "s2", HA) is not None
    new = [sa for sa in ha.sas("s1", FA2) if sa.local_id == ike_identity(HA, 0x1501)]
    assert len(new) == 1 and len(new[0].installed) == 1
    assert sorted((p.owner, str(p.peer), p.spi_in) for p in ha.paths()) == [
        ("s1", str(FA2), 0x1203),
        ("s1", str(FA2), 0x1501),
        ("s2", str(FA1), 0x1202),
    ]
    # The FA1 end of s1 stays loaded until FA1 itself deletes it (flow E); then only s2 is left there.
    assert fa1.delete("s1") == 1
    assert [p.owner for p in fa1.paths()] == ["s2"] and only_sa(fa1, "s2", HA) is not None


def parse_owner(sa: IkeSaState) -> str:
    parsed = parse_connection_name(sa.name)
    assert parsed is not None
    return parsed.owner


FAILURES = [  # (what the initiator's view has differently, is the responder's end loaded?, error, message)
    pytest.param(
        {"peer": IPv4Address("192.0.2.99")},
        True,
        PeerUnreachable,
        "no IKE answer from 192.0.2.99 within 1 s",
        id="peer unreachable",
    ),
    pytest.param(
        {"ike_proposal": "aes128-sha256-ecp256"}, True, ProposalMismatch, "none of the IKE proposals", id="IKE proposal"
    ),
    pytest.param(
        {
            "esp_transform": EspTransform.AES_CBC_256_HMAC_SHA256,
            "key_in": Secret(b"i" * 64),
            "key_out": Secret(b"o" * 64),
        },
        True,
        ProposalMismatch,
        "none of the ESP transforms offered \\(aes256-sha256\\)",
        id="ESP transform",
    ),
    pytest.param(
        {"ike_psk": Secret(b"not-the-same-psk-0123456789abcdef")}, True, AuthenticationFailed, "keys differ", id="PSK"
    ),
    pytest.param({}, False, AuthenticationFailed, "has not installed its end", id="responder not installed"),
]


@pytest.mark.netns
@pytest.mark.strongswan
@pytest.mark.parametrize(("change", "load_responder", "error", "message"), FAILURES)
def test_failures_raise_and_leave_nothing_behind(
    lab2: Lab, change: dict[str, object], load_responder: bool, error: type[SaError], message: str
) -> None:
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002)
    fa, ha = fa_node.backend(), ha_node.backend(timeout=1.0)
    # An unrelated path of another owner that must survive the failure.
    s9_fa, s9_ha = fa_ha(fa_node.address, ha_node.address, MN2, 0x1009, 0x2009, seed=9)
    fa.install(s9_fa, "s9")
    ha.install(s9_ha, "s9")
    kept = only_sa(ha, "s9", fa_node.address)
    if load_responder:
        fa.install(fa_view, "s1")

    with pytest.raises(error, match=message) as info:
        ha.install(dataclasses.replace(ha_view, **change), "s1")
    psk = ha_view.ike_psk
    assert psk is not None and psk.value.decode() not in str(info.value)

    conns, keys, sas = leftovers(ha_node)
    assert conns == keys == [connection_name("s9", fa_node.address, 0x2009)]
    assert sas == conns and [key(sa) for sa in ha.sas()] == [key(kept)]
    assert [p.owner for p in ha.paths()] == ["s9"]
    assert [r["owner"] for r in json.loads(ha.state_file.read_text())["paths"]] == ["s9"]
    wait_until(lambda: fa.sas("s1") == [], what="the responder to drop its half-made SA too")


@pytest.mark.netns
@pytest.mark.strongswan
def test_daemon_going_down_is_a_clear_error(lab2: Lab) -> None:
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002)
    fa = fa_node.backend()
    fa.install(fa_view, "s1")
    fa_node.charon.stop()
    for call in (fa.paths, lambda: fa.install(fa_view, "s1"), lambda: fa.delete("s1")):
        with pytest.raises(CharonUnavailable, match="cannot reach charon"):
            call()
    # The HA initiating toward a node whose charon is down: unreachable, and nothing left at the HA.
    ha = ha_node.backend(timeout=0.5)
    with pytest.raises(PeerUnreachable):
        ha.install(ha_view, "s1")
    assert leftovers(ha_node) == ([], [], [])
    # A restarted charon has forgotten everything: so does the backend (and its side table).
    fa_node.charon.start()
    assert fa.paths() == []
    assert json.loads(fa.state_file.read_text())["paths"] == []


@pytest.mark.netns
@pytest.mark.strongswan
def test_side_table_is_reread_only_when_it_changed_and_a_corrupt_one_is_dropped_only_if_charon_is_empty(
    lab2: Lab,
) -> None:
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, _ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002)
    fa, other = fa_node.backend(), fa_node.backend()  # two objects of one node share the table
    fa.install(fa_view, "s1")
    assert [p.owner for p in other.paths()] == ["s1"]  # it changed: read again
    assert other.delete("s1") == 1
    assert fa.paths() == []  # the other object's change is seen
    # Corrupt while charon holds a path of ours: an error, nothing dropped.
    fa.install(fa_view, "s2")
    fa.state_file.write_text("{not json")
    with pytest.raises(SideTableCorrupt, match="corrupt"):
        fa_node.backend().paths()
    fa.state_file.write_text(json.dumps({"version": 1, "paths": []}))
    assert fa_node.backend().paths() == []  # charon's connection is not ours by the table: dropped from view
    with Vici(fa_node.charon.vici_socket, 5.0) as v:
        v.unload_conn(connection_name("s2", ha_node.address, 0x1001))
        v.unload_shared(connection_name("s2", ha_node.address, 0x1001))
    assert leftovers(fa_node) == ([], [], [])
    # Corrupt and charon holds nothing of ours (power lost before the rename reached the disk): start over.
    fa.state_file.write_text("{not json")
    fresh = fa_node.backend()
    assert fresh.paths() == [] and json.loads(fa.state_file.read_text()) == {"version": 1, "paths": []}


@pytest.mark.netns
@pytest.mark.strongswan
def test_restarted_backend_finds_its_paths(lab2: Lab) -> None:
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002)
    s2_fa, s2_ha = fa_ha(fa_node.address, ha_node.address, MN2, 0x1003, 0x2004, seed=5)
    ha = ha_node.backend()
    fa_node.backend().install(fa_view, "s1/FA_HA")
    fa_node.backend().install(s2_fa, "s2/FA_HA")
    ha.install(ha_view, "s1/FA_HA")
    ha.install(s2_ha, "s2/FA_HA")
    sa = only_sa(ha, "s1/FA_HA", fa_node.address)
    ha.close()  # the agent process ends; charon keeps everything

    table = ha.state_file.read_bytes()
    for secret in (ha_view.ike_psk, ha_view.key_in, ha_view.key_out, s2_ha.ike_psk):
        assert secret is not None and secret.value not in table and secret.value.hex().encode() not in table

    again = ha_node.backend()
    found = again.paths()
    assert [(p.owner, p.peer, p.spi_in, p.spi_out) for p in found] == [
        ("s1/FA_HA", fa_node.address, 0x2002, 0x1001),
        ("s2/FA_HA", fa_node.address, 0x2004, 0x1003),
    ]
    public = dataclasses.replace(ha_view, key_in=Secret(b""), key_out=Secret(b""), ike_psk=Secret(b""))
    assert found[0].path == public  # every non-secret field; the secrets were never written down
    # The agent installs the identical path again: recognised (fingerprint), nothing renegotiated.
    assert again.install(ha_view, "s1/FA_HA").path == ha_view
    assert again.paths()[0].path == ha_view and key(only_sa(again, "s1/FA_HA", fa_node.address)) == key(sa)
    # A different key under the same inbound SPI is still a conflict after the restart.
    with pytest.raises(SaConflict):
        ha_node.backend().install(dataclasses.replace(s2_ha, ike_psk=Secret(b"x" * 32)), "s2/FA_HA")
    assert again.delete("s2/FA_HA") == 1
    wait_until(lambda: fa_node.backend().sas("s2/FA_HA") == [], what="the FA to process the DELETE")
    assert [p.owner for p in ha_node.backend().paths()] == ["s1/FA_HA"]


@pytest.mark.netns
@pytest.mark.strongswan
@pytest.mark.slow
def test_rekeyed_within_the_lifetime(lab2: Lab) -> None:
    """Lifetime 2 s: the initiator rekeys IKE_SA and CHILD_SA at 1 s; the first CHILD_SA is gone at 2 s."""
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002, lifetime=2)
    fa, ha = fa_node.backend(), ha_node.backend()
    fa.install(fa_view, "s1")
    events = socket.socket(socket.AF_UNIX)
    events.connect(str(ha_node.charon.vici_socket))
    listener = vici.Session(events)
    ha.install(ha_view, "s1")
    installed = time.monotonic()
    (first,) = only_sa(ha, "s1", fa_node.address).installed
    assert first.life_time <= 2
    label, _message = next(listener.listen(["child-rekey"], timeout=3.0))  # (None, None) after 3 s
    events.close()
    assert label == b"child-rekey", "no CHILD_SA rekey within the lifetime"
    assert time.monotonic() - installed < 1.9

    def rekeyed(backend: StrongSwanBackend) -> bool:
        """The first CHILD_SA is gone, a newer one is installed (the next rekey may be under way)."""
        children = [c for sa in backend.sas("s1") for c in sa.children]
        spis = {spi for c in children for spi in (c.spi_in, c.spi_out)}
        return not {first.spi_in, first.spi_out} & spis and any(c.state == "INSTALLED" for c in children)

    # The rekeyed CHILD_SA lingers (DELETED) for late packets, but no longer than its hard lifetime.
    wait_until(lambda: rekeyed(ha) and rekeyed(fa), timeout=3.0, what="the old CHILD_SA to expire on both ends")
    assert time.monotonic() - installed < 2.0 + 0.5
    assert [p.owner for p in ha.paths()] == ["s1"]


@pytest.mark.netns
@pytest.mark.strongswan
def test_a_refused_configuration_is_rolled_back(lab2: Lab) -> None:
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, _ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1001, 0x2002)
    fa = fa_node.backend()
    with pytest.raises(StrongSwanError, match=r"charon refused the path toward 192\.0\.2\.1: "):
        fa.install(dataclasses.replace(fa_view, ike_proposal="aes128-nosuchprf-x25519"), "s1")  # the key was loaded
    assert leftovers(fa_node) == ([], [], []) and fa.paths() == []


@pytest.mark.netns
@pytest.mark.strongswan
def test_staged_installs_negotiate_in_the_background_and_fail_leaving_nothing(lab3: Lab) -> None:
    """begin_install / finish_install (what the HA's executor uses to tell its
    gateways while it negotiates): the initiating end returns at once with a
    pending install and the path is listed only when its CHILD_SA is up; two
    negotiations run side by side; a responding end is done at once; a failed
    negotiation raises at finish_install, as install would, and leaves nothing."""
    ha_node, fa1_node, fa2_node = lab3[0], lab3[1], lab3[2]
    ha, fa1, fa2 = ha_node.backend(timeout=2.0), fa1_node.backend(), fa2_node.backend()
    HA, FA1, FA2 = ha_node.address, fa1_node.address, fa2_node.address
    s1_fa, s1_ha = fa_ha(FA1, HA, MN1, 0x1601, 0x1701, seed=5)
    s2_fa, s2_ha = fa_ha(FA2, HA, MN2, 0x1602, 0x1702, seed=6)
    assert isinstance(fa1.begin_install(s1_fa, "s1"), InstalledPath)  # the responder: loaded, done
    assert isinstance(fa2.begin_install(s2_fa, "s2"), InstalledPath)

    first, second = ha.begin_install(s1_ha, "s1"), ha.begin_install(s2_ha, "s2")
    assert isinstance(first, PendingInstall) and isinstance(second, PendingInstall)
    assert ha.paths() == [], "a path is listed once it is established"
    with pytest.raises(SaConflict):  # its SPI is taken already
        ha.begin_install(dataclasses.replace(s1_ha, peer=FA2), "s9")
    assert ha.finish_install(second).owner == "s2" and ha.finish_install(first).owner == "s1"
    assert only_sa(ha, "s1", FA1) is not None and only_sa(ha, "s2", FA2) is not None
    wait_until(lambda: children(fa1, "s1") == ["INSTALLED"] and children(fa2, "s2") == ["INSTALLED"])
    assert [(p.owner, p.spi_in) for p in ha.paths()] == [("s2", 0x1702), ("s1", 0x1701)]

    # FA1 has not loaded its end of s3: the HA's negotiation fails when it is finished.
    _, s3_ha = fa_ha(FA1, HA, MN2, 0x1603, 0x1703, seed=7)
    pending = ha.begin_install(s3_ha, "s3")
    assert isinstance(pending, PendingInstall)
    with pytest.raises(AuthenticationFailed, match="has not installed its end"):
        ha.finish_install(pending)
    conns, keys, sas = leftovers(ha_node)
    kept = sorted(connection_name(o, p, s) for o, p, s in (("s1", FA1, 0x1701), ("s2", FA2, 0x1702)))
    assert sorted(conns) == sorted(keys) == sorted(sas) == kept
    assert "s3" not in {p.owner for p in ha.paths()} and fa1.sas("s3") == []


@pytest.mark.netns
@pytest.mark.strongswan
def test_executor_begins_and_finishes_on_strongswan(lab2: Lab) -> None:
    """SaExecutor.begin leaves an initiating install negotiating (None) and
    finish reports it; a responding one is reported at once."""
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1801, 0x1901)
    fa = SaExecutor(fa_node.backend(), "fa")
    ha = SaExecutor(ha_node.backend(), "ha")
    assert fa.begin(InstallPaths("s1", (fa_view,))) == ([fa_view], None) and not fa.pending
    event = InstallPaths("s1", (ha_view,))
    assert ha.begin(event) is None and ha.pending
    assert ha.finish() == [(event, [ha_view], None)] and not ha.pending
    assert only_sa(ha.backend, "s1", fa_node.address) is not None  # type: ignore[arg-type]


@pytest.mark.netns
@pytest.mark.strongswan
def test_delete_does_not_wait_for_a_peer_that_is_gone(lab2: Lab) -> None:
    """A handoff away from a failed FA: the HA's delete toward it returns at once
    (it used to wait the whole backend timeout for the DELETE's answer)."""
    ha_node, fa_node = lab2[0], lab2[1]
    fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x1A01, 0x1B01)
    fa, ha = fa_node.backend(), ha_node.backend(timeout=30.0)
    fa.install(fa_view, "s1")
    ha.install(ha_view, "s1")
    fa_node.run("ip", "link", "set", fa_node.veth, "down")
    started = time.monotonic()
    assert ha.delete("s1") == 1
    assert time.monotonic() - started < 15.0, "delete waited for the peer's answer"
    assert ha.paths() == [] and leftovers(ha_node) == ([], [], [])
