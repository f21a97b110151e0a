"""FreeRADIUS 3.2 as the visited domain's RADIUS proxy in front of the home AAA.

docs/design.md section 3: the session root key (SRK) goes to the HA and to this
project's foreign AAA, never to an FA. A generic RADIUS proxy relays
everything it is given to the FA, so the home AAA must not give it the SRK:
its client role is ``proxy``, and only ``foreign-aaa`` gets the SRK. This
test runs a real FreeRADIUS as that proxy and looks at the bytes.

Topology, all on loopback (docs/foreign-aaa.md, "FreeRADIUS as the visited
domain's proxy", shows the same configuration):

* home AAA: ``aaa-vpn serve home`` on 127.0.0.1 (a free port), on a temporary
  database provisioned through the CLI (tests/test_home_server.py's
  ``provision``: user mn1@home.example, HA ha1 = 127.0.0.2, a static and a
  dynamic gateway) plus FreeRADIUS as client ``freeradius`` = 127.0.0.4,
  role ``proxy``, domain visited.example;
* FreeRADIUS: ``freeradius -f`` from its own temporary raddb (tests/freeradius.py)
  listening on 127.0.0.4; realm home.example (``suffix``, ``nostrip``) ->
  a home_server_pool holding the home AAA, proxied from 127.0.0.4
  (``src_ipaddr``); clients FA1 = 127.0.0.11 and FA2 = 127.0.0.12, which must
  sign their requests (``require_message_authenticator``); our dictionary
  ``$INCLUDE``d, so FreeRADIUS re-encrypts salt-encrypted attributes for the FA;
* the FAs: the agents' RADIUS client (roles/radius_client.py) driven by a small
  loop over a UDP socket bound to the FA's address, every datagram kept; the
  HA asks the home AAA directly. tshark records the proxy <-> home AAA leg.

Every process started here is stopped by its PID; the temporary directory is removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from aaa_vpn import keys
from aaa_vpn.model import Session
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.roles.radius_client import (
    Event,
    RadiusClient,
    RequestAccepted,
    RequestFailed,
    RequestRejected,
    ServerConfig,
)
from aaa_vpn.secret import Secret
from aaa_vpn.store import open_store
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.enums import EspTransform, Flavour, GatewayMode, KeyMode
from aaa_vpn.wire.profile import VENDOR_ID, PathProfile, PathRole, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import AaaVpnAttr, encode_profile
from aaa_vpn.wire.radius_request import AccessRequest

from . import freeradius
from .conftest import _require_tool
from .radius_client import (
    PRECEDING,
    access_request,
    exchange,
    probed_udp_port,
    served_port,
    split_attributes,
    vendor_values,
    wait_until_serving,
)
from .test_home_interop import _start_capture
from .test_home_server import HA_SECRET, MN_SECRET, NAI, SECRET, cli, provision, start_server, stop

pytestmark = [pytest.mark.interop, pytest.mark.integration]

PROXY = IPv4Address("127.0.0.4")  # FreeRADIUS: listens here and proxies from here
FA1 = IPv4Address("127.0.0.11")
FA2 = IPv4Address("127.0.0.12")
HA = IPv4Address("127.0.0.2")
FA_SECRET = b"fa-to-freeradius-secret"
PROXY_SECRET = b"freeradius-to-home-secret"
#: A Proxy-State the FA puts in its request, as if a proxy were already in front
#: of it: FreeRADIUS must forward it unchanged and the reply must echo it
#: (RFC 2865 section 5.33), with FreeRADIUS's own Proxy-State added and removed.
FA_PROXY_STATE = b"fa-side-state\x00\x01"


@dataclass
class Visited:
    db: Path
    home: tuple[str, int]
    proxy: tuple[str, int]
    home_log: Path
    raddb: Path


def _proxy_conf(home_port: int) -> str:
    return f"""\
proxy server {{
    default_fallback = no
}}
home_server home-aaa {{
    type = auth
    ipaddr = 127.0.0.1
    port = {home_port}
    src_ipaddr = {PROXY}
    secret = {PROXY_SECRET.decode()}
    response_window = 5
    zombie_period = 40
    revive_interval = 120
    status_check = status-server
    check_interval = 30
    num_answers_to_alive = 3
}}
home_server_pool home-example {{
    type = fail-over
    home_server = home-aaa
}}
realm home.example {{
    auth_pool = home-example
    nostrip
}}
"""


def _server_conf(port: int) -> str:
    return f"""\
$INCLUDE clients.conf
modules {{
    realm suffix {{
        format = suffix
        delimiter = "@"
    }}
}}
server visited {{
    listen {{
        type = auth
        ipaddr = {PROXY}
        port = {port}
    }}
    authorize {{
        suffix
    }}
    authenticate {{
    }}
    pre-proxy {{
    }}
    post-proxy {{
    }}
}}
"""


def _clients_conf() -> str:
    return "".join(
        f"client {name} {{\n    ipaddr = {address}\n    secret = {FA_SECRET.decode()}\n"
        "    require_message_authenticator = yes\n}\n"
        for name, address in (("fa1", FA1), ("fa2", FA2))
    )


@pytest.fixture(scope="module")
def visited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Visited]:
    binary = _require_tool("freeradius")  # missing: skip, or fail under AAA_VPN_REQUIRE_TOOLS=1 (CI)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    assert "FreeRADIUS Version 3." in version, f"this configuration is FreeRADIUS 3.x syntax; found: {version[:200]}"
    base = tmp_path_factory.mktemp("freeradius-proxy")
    try:
        yield from _run(binary, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(binary: str, base: Path) -> Iterator[Visited]:
    db = base / "vpn.db"
    provision(db)
    proxy_client = ["freeradius", "--address", str(PROXY), "--role", "proxy", "--domain", "visited.example"]
    cli(db, "client", "add", *proxy_client, "--secret", PROXY_SECRET.decode())
    home_log = base / "home.log"
    home = start_server(db, 0, 1, home_log)
    proxy: subprocess.Popen[bytes] | None = None
    raddb: Path | None = None
    try:
        home_port = served_port(home, home_log)
        # FreeRADIUS can neither take a bound socket nor pick and report its
        # port: it is told a probed one, and started again if that was taken.
        ports: list[int] = []

        def configure(attempt: int) -> Path:
            ports.append(probed_udp_port(str(PROXY)))
            written = freeradius.write_raddb(
                base / f"fr{attempt}", _server_conf(ports[-1]), proxy=_proxy_conf(home_port)
            )
            (written / "clients.conf").write_text(_clients_conf())
            return written

        proxy, raddb = freeradius.start_on_probed_ports(binary, configure)
        proxy_port = ports[-1]
        wait_until_serving(("127.0.0.1", home_port), SECRET)
        yield Visited(db, ("127.0.0.1", home_port), (str(PROXY), proxy_port), home_log, raddb)
    finally:
        codes = []
        if proxy is not None:  # stopped by its PID
            if proxy.poll() is None:
                proxy.send_signal(signal.SIGTERM)
                try:
                    proxy.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proxy.kill()
                    proxy.wait()
            codes.append(proxy.returncode)
        codes.append(stop(home))
        logs = f"{home_log.read_text(errors='replace')[-3000:]}\n{_fr_log(raddb) if raddb else ''}"
        assert codes == [0] * len(codes), f"exit codes (freeradius, home AAA) {codes}:\n{logs}"


def _fr_log(raddb: Path) -> str:
    log = freeradius.log_file(raddb)
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


# -- the FA's side: the agents' RADIUS client driven over a real socket ---------------------


@dataclass
class Wire:
    """One request's outcome and every datagram the FA sent and received."""

    event: Event
    sent: list[bytes]
    received: list[bytes]


def ask(server: tuple[str, int], secret: bytes, source: IPv4Address, info: AccessRequest) -> Wire:
    """Send ``info`` from ``source`` with the agents' RadiusClient and wait for its outcome."""
    client = RadiusClient(
        [ServerConfig(server[0], server[1], Secret(secret), "server")], timeout=3.0, retries=1, status_interval=None
    )
    sent: list[bytes] = []
    received: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((str(source), 0))
        now = time.monotonic()
        client.request(info, now)
        while True:
            for data, address in client.datagrams_to_send(now):
                sock.sendto(data, address)
                sent.append(data)
            while (event := client.next_event()) is not None:
                if isinstance(event, RequestAccepted | RequestRejected | RequestFailed):
                    return Wire(event, sent, received)
            timer = client.get_timer()
            sock.settimeout(max(0.01, (timer if timer is not None else now + 3.0) - now))
            try:
                data, address = sock.recvfrom(8192)
            except TimeoutError:
                now = time.monotonic()
                client.handle_timer(now)
                continue
            now = time.monotonic()
            received.append(data)
            client.receive_datagram(data, address, now)


def fa_registration(fa: IPv4Address, previous_fa: IPv4Address | None = None) -> AccessRequest:
    chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, Secret(MN_SECRET))
    return AccessRequest(
        nai=NAI,
        chap_password=chap_password,
        chap_challenge=chap_challenge,
        nas_ip_address=fa,
        request_type=RequestType.FA_REGISTRATION,
        care_of_address=fa,
        home_agent=HA,
        previous_fa=previous_fa,
        proxy_states=(FA_PROXY_STATE,),
    )


def accepted(wire: Wire, visited: Visited) -> RequestAccepted:
    # RequestAccepted means the client verified the reply: Response Authenticator
    # and Message-Authenticator under the FA's own secret, Proxy-States echoed.
    assert isinstance(wire.event, RequestAccepted), f"{wire.event}\n{_fr_log(visited.raddb)}"
    assert len(wire.received) == 1, f"{len(wire.received)} replies: {[r.hex() for r in wire.received]}"
    return wire.event


def stored_session(db: Path) -> Session:
    store = open_store(db, db.with_name(db.name + ".key"))
    try:
        (session,) = store.find_sessions(NAI)
    finally:
        store.close()
    return session


def no_session_root_key(packet: bytes, who: str) -> None:
    found = vendor_values(split_attributes(packet), VENDOR_ID, AaaVpnAttr.SESSION_ROOT_KEY)
    assert found == [], (
        f"{who}: expected no Aaa-Vpn-Session-Root-Key (Vendor-Specific 26, vendor {VENDOR_ID}, type"
        f" {int(AaaVpnAttr.SESSION_ROOT_KEY)}); found {len(found)}, value(s) {[v.hex() for v in found]}"
        f"\nwhole packet: {packet.hex()}"
    )


def _label(session: Session, path: PathProfile) -> bytes:
    if path.role is PathRole.FA_HA:
        return b"fa-ha"
    prefix = {PathRole.FA_GW: "fa-gw:", PathRole.FA_FA: "fa-fa:"}[path.role]
    return next(a.path for a in session.spis if a.path.startswith(prefix)).split("@")[0].encode()


def check_fa_keys(profile: VpnProfile, session: Session, fa: IPv4Address) -> None:
    """Every key the FA decoded (with its own secret) is the one the home AAA
    derives from the stored session's root key for this FA, epoch and path."""
    srk, epoch = session.session_root_key, session.epoch
    spi = {a.path: a.spi for a in session.spis}
    assert profile.epoch == epoch and profile.care_of_address == fa
    for path in profile.paths:
        label = _label(session, path)
        length = path.esp_transform.keymat_length
        what = f"{path.role.name} {path.local} <-> {path.peer}"
        assert path.local == fa, what
        assert path.key_in == keys.derive_sa_key(srk, label, path.peer, fa, epoch, length), f"{what}: key in"
        assert path.key_out == keys.derive_sa_key(srk, label, fa, path.peer, epoch, length), f"{what}: key out"
        assert path.spi_in == spi[f"{label.decode()}@{fa}"], f"{what}: SPI in"
        assert path.spi_out == spi[f"{label.decode()}@{path.peer}"], f"{what}: SPI out"
        if path.ike_psk is not None:
            assert path.ike_psk == keys.derive_ike_psk(srk, label, fa, path.peer, epoch), f"{what}: IKE PSK"
    assert profile.fa_ha_key == keys.derive_fa_ha_key(srk, fa, HA, epoch)
    assert profile.handoff_key == keys.derive_handoff_key(srk, fa, epoch)


def _message_authenticator_ok(packet: bytes, secret: bytes, request_authenticator: bytes) -> bool:
    """RFC 3579 section 3.2: HMAC-MD5 over the packet with the attribute's value
    zeroed and, in a reply, the Request Authenticator in place of its own."""
    position, found = 20, []
    while position < len(packet):
        if packet[position] == rc.MESSAGE_AUTHENTICATOR_TYPE:
            found.append(position + 2)
        position += packet[position + 1]
    if len(found) != 1:
        return False
    at = found[0]
    signed = packet[:4] + request_authenticator + packet[20:at] + bytes(16) + packet[at + 16 :]
    return hmac.compare_digest(packet[at : at + 16], hmac.new(secret, signed, hashlib.md5).digest())


def _captured(tshark: str, pcap: Path, home_port: int) -> list[tuple[str, bytes]]:
    """(source address, RADIUS payload) of every datagram to or from the home AAA's port, in order."""
    out = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-T", "fields", "-e", "ip.src", "-e", "udp.payload"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [(src, bytes.fromhex(payload)) for src, payload in (line.split("\t") for line in out.splitlines() if line)]


# -- the tests --------------------------------------------------------------------------------


def test_an_fa_behind_freeradius_gets_its_keys_and_no_session_root_key(
    visited: Visited, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    tshark = require_tool("tshark")
    pcap = tmp_path / "proxy-home.pcap"
    capture = _start_capture(tshark, visited.home[1], pcap)
    try:
        wire = ask(visited.proxy, FA_SECRET, FA1, fa_registration(FA1))
        time.sleep(0.3)  # let the last datagram reach the capture file
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=20)
    event = accepted(wire, visited)

    # The FA's leg, raw: Message-Authenticator first in our request, one valid
    # Message-Authenticator in the reply, our Proxy-State echoed exactly once, no SRK.
    request, reply = wire.sent[0], wire.received[0]
    assert split_attributes(request)[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE
    assert reply[0] == rc.ACCESS_ACCEPT, f"expected Access-Accept (code 2), got code {reply[0]}: {reply.hex()}"
    assert _message_authenticator_ok(reply, FA_SECRET, request[4:20]), f"reply to the FA: {reply.hex()}"
    reply_states = [v for c, v in split_attributes(reply) if c == rc.PROXY_STATE]
    assert reply_states == [FA_PROXY_STATE], f"Proxy-States to the FA: {[v.hex() for v in reply_states]}"
    no_session_root_key(reply, "the Access-Accept FreeRADIUS sent the FA")
    profile = event.profile
    assert profile.session_root_key is None

    # The proxy <-> home AAA leg, as tshark recorded it.
    legs = _captured(tshark, pcap, visited.home[1])
    assert [(src, data[0]) for src, data in legs] == [(str(PROXY), rc.ACCESS_REQUEST), ("127.0.0.1", rc.ACCESS_ACCEPT)]
    proxied, answer = legs[0][1], legs[1][1]
    proxied_attributes = split_attributes(proxied)
    assert (rc.USER_NAME, NAI.encode()) in proxied_attributes, "nostrip: the home AAA needs the whole NAI"
    assert _message_authenticator_ok(proxied, PROXY_SECRET, proxied[4:20]), (
        f"FreeRADIUS's proxied request carries no valid Message-Authenticator under its home secret: {proxied.hex()}"
    )
    sent_states = [v for c, v in proxied_attributes if c == rc.PROXY_STATE]
    assert len(sent_states) == 2 and sent_states[0] == FA_PROXY_STATE, (
        f"expected the FA's Proxy-State {FA_PROXY_STATE.hex()} then FreeRADIUS's own;"
        f" got {[v.hex() for v in sent_states]}"
    )
    answer_attributes = split_attributes(answer)
    assert answer_attributes[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE
    assert _message_authenticator_ok(answer, PROXY_SECRET, proxied[4:20]), f"home AAA's answer: {answer.hex()}"
    assert [v for c, v in answer_attributes if c == rc.PROXY_STATE] == sent_states, "echoed in order (RFC 2865 5.33)"
    no_session_root_key(answer, "the home AAA's Access-Accept to a client of role proxy")

    # The FA's keys are the ones the home AAA derives for this FA: from the
    # stored session's root key, and mirrored in the HA's view of the same paths.
    session = stored_session(visited.db)
    assert session.session_id == profile.session_id and session.care_of_address == FA1
    assert session.foreign_domain == "visited.example"  # the proxy client's domain
    assert {p.role for p in profile.paths} == {PathRole.FA_HA, PathRole.FA_GW}
    check_fa_keys(profile, session, FA1)
    chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, Secret(MN_SECRET))
    ha_wire = ask(
        visited.home,
        HA_SECRET,
        HA,
        AccessRequest(
            nai=NAI,
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=HA,
            request_type=RequestType.HA_REGISTRATION,
            care_of_address=FA1,
            session_id=profile.session_id,
        ),
    )
    ha = accepted(ha_wire, visited).profile
    fa_ha = next(p for p in profile.paths if p.role is PathRole.FA_HA)
    at_ha = next(p for p in ha.paths if p.role is PathRole.FA_HA)
    assert (at_ha.local, at_ha.peer) == (HA, FA1)
    assert (at_ha.key_in, at_ha.key_out) == (fa_ha.key_out, fa_ha.key_in)
    assert (at_ha.spi_in, at_ha.spi_out) == (fa_ha.spi_out, fa_ha.spi_in)
    assert at_ha.ike_psk == fa_ha.ike_psk and ha.fa_ha_key == profile.fa_ha_key


def test_freeradius_drops_an_fa_request_without_message_authenticator(visited: Visited) -> None:
    # require_message_authenticator = yes on FreeRADIUS's FA clients (BlastRADIUS):
    # the same request unsigned gets no answer at all.
    unsigned = access_request(FA_SECRET, NAI, MN_SECRET, nas_ip=str(FA1), care_of=str(FA1), message_authenticator=False)
    assert exchange(visited.proxy, unsigned, source=(str(FA1), 0), timeout=1.0).reply is None
    signed = access_request(FA_SECRET, NAI, MN_SECRET, nas_ip=str(FA1), care_of=str(FA1))
    answer = exchange(visited.proxy, signed, source=(str(FA1), 0), timeout=5.0)
    assert answer.code == rc.ACCESS_ACCEPT, f"the signed request: {answer.reply!r}"


def test_a_same_domain_handoff_behind_freeradius_is_answered_by_the_home_aaa(visited: Visited) -> None:
    first = accepted(ask(visited.proxy, FA_SECRET, FA1, fa_registration(FA1)), visited).profile
    before = stored_session(visited.db)
    wire = ask(visited.proxy, FA_SECRET, FA2, fa_registration(FA2, previous_fa=FA1))
    moved = accepted(wire, visited).profile
    no_session_root_key(wire.received[0], "the Access-Accept FreeRADIUS sent the new FA")
    # FreeRADIUS holds no session: the home AAA moved it (rule 6 of roles/home_aaa.py, plan rule 6),
    # the only one who writes the database: same session and root key, next epoch, care-of FA2.
    after = stored_session(visited.db)
    assert (after.session_id, after.epoch, after.care_of_address) == (first.session_id, first.epoch + 1, FA2)
    assert after.session_root_key == before.session_root_key
    check_fa_keys(moved, after, FA2)
    # Flow E: the new FA is told its predecessor and that FA's handoff key.
    assert moved.previous_fa == FA1
    assert moved.previous_fa_handoff_key == keys.derive_handoff_key(after.session_root_key, FA1, first.epoch)
    assert [(p.role, p.peer) for p in moved.paths if p.role is PathRole.FA_FA] == [(PathRole.FA_FA, FA1)]


def test_contrast_as_foreign_aaa_the_same_freeradius_would_hand_the_fa_the_session_root_key(
    visited: Visited,
) -> None:
    # Why the role matters: provisioned as foreign-aaa (what the home AAA used
    # to do for role proxy), FreeRADIUS gets the SRK and re-encrypts it for the
    # FA like any other attribute it knows -- the FA could derive every key.
    cli(visited.db, "client", "change", "freeradius", "--role", "foreign-aaa")
    try:
        wire = ask(visited.proxy, FA_SECRET, FA1, fa_registration(FA1))
    finally:
        cli(visited.db, "client", "change", "freeradius", "--role", "proxy")
    profile = accepted(wire, visited).profile
    found = vendor_values(split_attributes(wire.received[0]), VENDOR_ID, AaaVpnAttr.SESSION_ROOT_KEY)
    assert len(found) == 1, f"expected one Aaa-Vpn-Session-Root-Key in {wire.received[0].hex()}"
    assert profile.session_root_key == stored_session(visited.db).session_root_key


def test_a_renewal_behind_freeradius_is_confirmed_without_a_key(visited: Visited) -> None:
    """The FA names its session and the digest of the view it holds; FreeRADIUS
    passes both through, and the home AAA's confirmation back: no key on
    either leg, signed for the FA, the FA's Proxy-State echoed."""
    first = accepted(ask(visited.proxy, FA_SECRET, FA1, fa_registration(FA1)), visited).profile
    assert first.digest is not None
    renewal = dataclasses.replace(fa_registration(FA1), session_id=first.session_id, profile_digest=first.digest)
    wire = ask(visited.proxy, FA_SECRET, FA1, renewal)
    event = accepted(wire, visited)
    assert event.profile is None and event.confirmation is not None, event
    confirmation = event.confirmation
    assert (confirmation.session_id, confirmation.epoch, confirmation.digest) == (
        first.session_id,
        first.epoch,
        first.digest,
    )
    assert 0 < confirmation.lifetime <= 3600
    request, reply = wire.sent[0], wire.received[0]
    assert _message_authenticator_ok(reply, FA_SECRET, request[4:20])
    attributes = split_attributes(reply)
    assert [v for c, v in attributes if c == rc.PROXY_STATE] == [FA_PROXY_STATE]
    for kind in (AaaVpnAttr.PATH_KEY_IN, AaaVpnAttr.PATH_KEY_OUT, AaaVpnAttr.FA_HA_KEY, AaaVpnAttr.SESSION_ROOT_KEY):
        assert vendor_values(attributes, VENDOR_ID, kind) == [], f"{kind.name} in a confirmation"
    # the stored session is the same one, the same epoch
    session = stored_session(visited.db)
    assert (session.session_id, session.epoch) == (first.session_id, first.epoch)


# -- a key ending in zero through FreeRADIUS ---------------------------------------------------

#: Keys whose last octet is zero: radclient prints such a ``string`` value one
#: NUL short (tests/test_home_interop.py), but the proxy must relay it whole.
_ZERO_ENDED = hashlib.sha256(b"aaa_vpn key ending in zero").digest()[:35] + b"\x00"
_TWO_ZEROS = hashlib.sha256(b"aaa_vpn key ending in two zeros").digest()[:34] + b"\x00\x00"


def _zero_ended_profile() -> VpnProfile:
    psk = hashlib.sha256(b"aaa_vpn psk ending in zero").digest()[:31] + b"\x00"
    binding = hashlib.sha256(b"aaa_vpn binding key ending in zero").digest()[:31] + b"\x00"
    path = PathProfile(
        role=PathRole.FA_HA,
        local=FA1,
        peer=HA,
        local_ts=(IPv4Network("198.51.100.10/32"),),
        remote_ts=(IPv4Network("0.0.0.0/0"),),
        key_mode=KeyMode.IKEV2,
        esp_transform=EspTransform.AES_GCM_16_256,  # 36-octet keys
        spi_in=0x1001,
        spi_out=0x1002,
        key_in=Secret(_ZERO_ENDED),
        key_out=Secret(_TWO_ZEROS),
        lifetime=3600,
        ike_proposal="aes256gcm16-prfsha256-x25519",
        ike_psk=Secret(psk),
        gateway_mode=GatewayMode.DYNAMIC,
        binding_key=Secret(binding),
    )
    return VpnProfile(
        session_id="zero-ended@home.example",
        home_address=IPv4Address("198.51.100.10"),
        home_agent=HA,
        care_of_address=FA1,
        lifetime=1800,
        epoch=3,
        paths=(path,),
    )


def _answer_once(sock: socket.socket, profile: VpnProfile, errors: list[BaseException]) -> None:
    """A scripted home AAA: answers one proxied Access-Request with ``profile``,
    Proxy-States echoed, signed under the proxy's secret."""
    try:
        data, address = sock.recvfrom(4096)
        authenticator = data[4:20]
        states = [rc.attribute(c, v) for c, v in split_attributes(data) if c == rc.PROXY_STATE]
        body = encode_profile(profile, Flavour.AAA_VPN, PROXY_SECRET, authenticator) + states
        sock.sendto(rc.encode_reply(rc.ACCESS_ACCEPT, data[1], authenticator, PROXY_SECRET, body), address)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_keys_ending_in_zero_survive_freeradius(tmp_path: Path) -> None:
    """The tagged keys are ``string`` in FreeRADIUS's dictionary (it cannot tag
    octets), and radclient prints a string without its last NUL: FreeRADIUS as
    the proxy must still re-encrypt every key whole for the FA, trailing zeros
    included."""
    binary = _require_tool("freeradius")
    profile = _zero_ended_profile()
    home = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    home.bind(("127.0.0.1", 0))
    home.settimeout(20)
    errors: list[BaseException] = []
    responder = threading.Thread(target=_answer_once, args=(home, profile, errors), daemon=True)
    responder.start()
    ports: list[int] = []

    def configure(attempt: int) -> Path:
        ports.append(probed_udp_port(str(PROXY)))
        written = freeradius.write_raddb(
            tmp_path / f"fr{attempt}", _server_conf(ports[-1]), proxy=_proxy_conf(home.getsockname()[1])
        )
        (written / "clients.conf").write_text(_clients_conf())
        return written

    proxy, raddb = freeradius.start_on_probed_ports(binary, configure)
    try:
        wire = ask((str(PROXY), ports[-1]), FA_SECRET, FA1, fa_registration(FA1))
        responder.join(timeout=20)
    finally:
        home.close()
        proxy.send_signal(signal.SIGTERM)  # stopped by its PID
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
    assert errors == [] and isinstance(wire.event, RequestAccepted), f"{errors} {wire.event}\n{_fr_log(raddb)}"

    # On FreeRADIUS's wire to the FA: every key re-encrypted whole under the FA's secret.
    request, reply = wire.sent[0], wire.received[0]
    (path,) = profile.paths
    A = AaaVpnAttr
    relayed = {
        kind: rc.salt_decrypt(value[1:], FA_SECRET, request[4:20])
        for kind in (A.PATH_KEY_IN, A.PATH_KEY_OUT, A.PATH_IKE_PSK, A.PATH_BINDING_KEY)
        for value in vendor_values(split_attributes(reply), VENDOR_ID, kind)
    }
    assert path.ike_psk is not None and path.binding_key is not None
    assert relayed == {
        A.PATH_KEY_IN: _ZERO_ENDED,
        A.PATH_KEY_OUT: _TWO_ZEROS,
        A.PATH_IKE_PSK: path.ike_psk.value,
        A.PATH_BINDING_KEY: path.binding_key.value,
    }
    # What the FA decoded: the keys the home AAA sent.
    assert wire.event.profile is not None
    (decoded,) = wire.event.profile.paths
    assert (decoded.key_in, decoded.key_out) == (path.key_in, path.key_out)
    assert (decoded.ike_psk, decoded.binding_key) == (path.ike_psk, path.binding_key)
