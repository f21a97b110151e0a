"""RADIUS accounting (RFC 2866) at the home AAA: what is recorded, merged and
answered (on the in-memory store and both databases), and a live server fed
by radclient with FreeRADIUS's own dictionary names."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aaa_vpn.service.home import HomeService
from aaa_vpn.store import init_store
from aaa_vpn.store.base import Store
from aaa_vpn.store.memory import MemoryStore
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.accounting import AcctStatus, counter_attributes, encode_accounting_request, session_class
from aaa_vpn.wire.radius_request import Accepted

from .radius_client import served_port, wait_until_serving
from .test_home_server import KEY_FILES, SECRET, Server, provision, register, start_server, stop
from .test_home_service import FA1, NAI, NOW, SECRETS, Client_, fa_request
from .test_home_service import provision as provision_store

PDSN = FA1  # the FA sends the accounting here (a PDSN in 3GPP2 terms)
_U32 = (4).to_bytes


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        opened: Store = MemoryStore()
    elif request.param == "sqlite":
        opened = init_store(tmp_path / "vpn.db")[0]
    else:
        opened = init_store(request.getfixturevalue("pg_url"), tmp_path / "vpn.key")[0]
    provision_store(opened)  # type: ignore[arg-type]
    try:
        yield opened
    finally:
        opened.close()


class Nas:
    """One NAS sending accounting to a service's accounting port."""

    def __init__(self, service: HomeService, address: str = PDSN, secret: bytes | None = None) -> None:
        self.service, self.address = service, address
        self.secret = secret or SECRETS[address]
        self.identifier = 0

    def packet(self, status: AcctStatus, session: str = "acct-1", *attributes: bytes, nas: bool = True) -> bytes:
        self.identifier = (self.identifier + 1) % 256
        head = [rc.attribute(rc.USER_NAME, NAI.encode())]
        if nas:
            head.append(rc.attribute(rc.NAS_IP_ADDRESS, bytes(map(int, self.address.split(".")))))
        return encode_accounting_request(self.identifier, self.secret, status, session, [*head, *attributes])

    def send(self, packet: bytes, now: float = NOW, port: int = 1813) -> bytes | None:
        replies = self.service.handle_accounting_batch([(packet, (self.address, port))], now)
        return replies[0][0] if replies else None


def _answered(packet: bytes, reply: bytes | None, secret: bytes) -> None:
    assert reply is not None, "no Accounting-Response"
    decoded = rc.decode_packet(reply)
    assert decoded.code == rc.ACCOUNTING_RESPONSE and decoded.identifier == packet[1]
    assert rc.check_response_authenticator(decoded, packet[4:20], secret)


def test_start_interims_and_stop_make_one_record(store: Store) -> None:
    service = HomeService(store, now=NOW)
    nas = Nas(service)
    start = nas.packet(AcctStatus.START, "acct-1", rc.attribute(55, _u32(int(NOW))))
    _answered(start, nas.send(start), nas.secret)
    interim = nas.packet(
        AcctStatus.INTERIM_UPDATE,
        "acct-1",
        *counter_attributes(5 * 2**32 + 7, 300, 12, 9),
        rc.attribute(46, _u32(60)),
        rc.vendor_attribute(5535, 48, _u32(1)),  # 3GPP2-Session-Continue
        rc.vendor_attribute(5535, 44, b"corr-0001"),  # 3GPP2-Correlation-Id
        rc.vendor_attribute(5535, 200, b"\x01\x02"),  # unknown to the dictionary
    )
    _answered(interim, nas.send(interim, NOW + 60), nas.secret)
    (record,) = store.list_accounting(nai=NAI)
    assert (record.started, record.updated, record.stopped) == (NOW, NOW + 60, None)
    assert (record.input_octets, record.output_octets, record.input_packets, record.output_packets) == (
        5 * 2**32 + 7,
        300,
        12,
        9,
    )
    assert record.session_time == 60 and record.nas == PDSN and record.client == "fa1"
    assert record.attributes["3GPP2-Session-Continue"] == 1
    assert record.attributes["3GPP2-Correlation-Id"] == "corr-0001"
    assert record.attributes["Vendor-5535-Attr-200"] == "0102"
    assert record.unique_id == store.get_accounting(record.unique_id).unique_id
    # a late, older Interim-Update takes nothing back
    late = nas.packet(AcctStatus.INTERIM_UPDATE, "acct-1", *counter_attributes(10, 10, 1, 1), rc.attribute(46, _u32(5)))
    _answered(late, nas.send(late, NOW + 61), nas.secret)
    stop_packet = nas.packet(
        AcctStatus.STOP,
        "acct-1",
        *counter_attributes(5 * 2**32 + 9, 400, 13, 10),
        rc.attribute(46, _u32(120)),
        rc.attribute(49, _u32(1)),  # User-Request
    )
    _answered(stop_packet, nas.send(stop_packet, NOW + 120), nas.secret)
    record = store.get_accounting(record.unique_id)
    assert (record.input_octets, record.output_octets, record.session_time) == (5 * 2**32 + 9, 400, 120)
    assert (record.stopped, record.terminate_cause, record.updates) == (NOW + 120, "User-Request", 4)
    # an Interim-Update after the Stop does not reopen it
    after = nas.packet(AcctStatus.INTERIM_UPDATE, "acct-1", *counter_attributes(1, 1, 1, 1))
    _answered(after, nas.send(after, NOW + 130), nas.secret)
    assert store.get_accounting(record.unique_id).stopped == NOW + 120
    assert service.counters["accounting.recorded"] == 5


def test_the_class_of_the_accept_ties_the_record_to_the_session(store: Store) -> None:
    service = HomeService(store, now=NOW)
    accepted = Client_(service, FA1).accepted(fa_request())
    assert isinstance(accepted, Accepted) and accepted.profile is not None
    session = accepted.profile.session_id
    nas = Nas(service)
    start = nas.packet(AcctStatus.START, "acct-9", rc.attribute(rc.CLASS, session_class(session)))
    _answered(start, nas.send(start), nas.secret)
    (record,) = store.list_accounting(session_id=session)
    assert record.class_value == f"aaa-vpn:{session}" and record.session_id == session


def test_a_retransmission_is_answered_again_and_counted_once(store: Store) -> None:
    service = HomeService(store, now=NOW)
    nas = Nas(service)
    start = nas.packet(AcctStatus.START)
    first, again = nas.send(start), nas.send(start, NOW + 1)
    assert first is not None and again == first
    assert service.counters["accounting.duplicates"] == 1
    # a NAS's retransmission with Acct-Delay-Time (a new packet) is merged, not doubled
    delayed = nas.packet(AcctStatus.START, "acct-1", rc.attribute(41, _u32(3)))
    _answered(delayed, nas.send(delayed, NOW + 3), nas.secret)
    (record,) = store.list_accounting()
    assert record.started == NOW and record.updates == 2


def test_accounting_on_closes_what_the_nas_had_open(store: Store) -> None:
    service = HomeService(store, now=NOW)
    nas, other = Nas(service), Nas(service, "192.0.2.5")
    for name in ("a", "b"):
        nas.send(nas.packet(AcctStatus.START, name))
    other.send(other.packet(AcctStatus.START, "c"))
    nas.send(nas.packet(AcctStatus.STOP, "b", rc.attribute(49, _u32(1))), NOW + 5)
    on = nas.packet(AcctStatus.ACCOUNTING_ON, "")  # no Acct-Session-Id: the whole NAS
    _answered(on, nas.send(on, NOW + 10), nas.secret)
    records = {r.acct_session_id: r for r in store.list_accounting()}
    assert (records["a"].stopped, records["a"].terminate_cause) == (NOW + 10, "NAS-Reboot")
    assert (records["b"].stopped, records["b"].terminate_cause) == (NOW + 5, "User-Request")
    assert records["c"].stopped is None


def test_what_cannot_be_recorded_gets_no_response(store: Store) -> None:
    service = HomeService(store, now=NOW)
    nas = Nas(service)
    # no Acct-Session-Id in a Start
    assert nas.send(nas.packet(AcctStatus.START, "")) is None
    # neither NAS-IP-Address nor NAS-Identifier
    assert nas.send(nas.packet(AcctStatus.START, "x", nas=False)) is None
    # the wrong secret: the Request Authenticator does not check out
    assert (
        Nas(service, secret=b"not-the-secret").send(Nas(service, secret=b"not-the-secret").packet(AcctStatus.START))
        is None
    )
    # an Access-Request on the accounting port
    assert service.handle_accounting_batch([(Client_(service, FA1).packet(fa_request()), (FA1, 9))], NOW) == []
    # an unknown NAS
    assert (
        Nas(service, "198.51.100.77", b"x" * 16).send(Nas(service, "198.51.100.77", b"x" * 16).packet(AcctStatus.START))
        is None
    )
    assert store.list_accounting() == []
    c = service.counters
    assert c["accounting.dropped.bad_accounting"] == 2 and c["accounting.dropped.bad_request_authenticator"] == 1
    assert c["accounting.dropped.unsupported_code"] == 1 and c["accounting.dropped.unknown_client"] == 1


def test_status_server_on_the_accounting_port(store: Store) -> None:
    service = HomeService(store, now=NOW)
    status = rc.seal_request(
        rc.STATUS_SERVER, 7, bytes(range(16)), SECRETS[FA1], rc.attribute(rc.NAS_IP_ADDRESS, bytes(4))
    )
    ((reply, _),) = service.handle_accounting_batch([(status, (FA1, 5))], NOW)
    assert rc.decode_packet(reply).code == rc.ACCOUNTING_RESPONSE


def test_a_store_that_fails_answers_nothing_and_the_retransmission_is_recorded() -> None:
    store = MemoryStore()
    provision_store(store)
    service = HomeService(store, now=NOW)
    nas = Nas(service)
    start = nas.packet(AcctStatus.START)
    store.unavailable = True
    assert nas.send(start) is None
    assert service.counters["accounting.dropped.store_unavailable"] == 1
    store.unavailable = False
    _answered(start, nas.send(start, NOW + 2), nas.secret)  # the same packet again: decided anew
    assert len(store.list_accounting()) == 1


# -- live: the server, radclient with FreeRADIUS's dictionaries, the CLI ----------------------------------


def _radclient(require_tool: Callable[[str], str], port: int, text: str) -> subprocess.CompletedProcess[str]:
    radclient = require_tool("radclient")
    return subprocess.run(
        [radclient, "-x", "-r", "1", "-t", "3", f"127.0.0.1:{port}", "acct", SECRET.decode()],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "sqlite":
        db: Path | str = tmp_path / "vpn.db"
    else:
        db = request.getfixturevalue("pg_url")
        KEY_FILES[db] = tmp_path / "vpn.key"
    provision(db)
    log = tmp_path / "server.log"
    process = start_server(db, 0, 2, log)
    try:
        port = served_port(process, log)
        wait_until_serving(("127.0.0.1", port), SECRET)
        yield Server(db, ("127.0.0.1", port), process, log)  # type: ignore[arg-type]
    finally:
        code = stop(process)
        KEY_FILES.pop(str(db), None)
        assert code == 0, f"server exited with {code}:\n{log.read_text()}"


def _accounting_port(server: Server) -> int:
    line = next(line for line in server.log_text().splitlines() if "worker listening" in line)
    return int(line.split("accounting=")[1].split()[0].rsplit(":", 1)[1])


def _cli(server: Server, *args: str) -> str:
    from .test_home_server import database_args

    done = subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", *database_args(server.db), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_radclient_accounting_with_freeradius_names_is_recorded(
    live: Server, require_tool: Callable[[str], str]
) -> None:
    _, accepted = register(live)
    assert accepted.code == rc.ACCESS_ACCEPT
    class_value = next(v for c, v in accepted.attributes if c == rc.CLASS)
    session_id = class_value.decode().removeprefix("aaa-vpn:")
    port = _accounting_port(live)
    common = (
        f'User-Name = "{NAI}"\nNAS-IP-Address = 127.0.0.1\nAcct-Session-Id = "pdsn-0001"\n'
        f"Class = 0x{class_value.hex()}\n"
        '3GPP2-Correlation-Id = "c0ffee01"\n3GPP2-BSID = "bsid-42"\n3GPP2-Home-Agent-IP-Address = 127.0.0.2\n'
    )
    for text in (
        common + "Acct-Status-Type = Start\n3GPP2-Begin-Session = 1\n",
        common + "Acct-Status-Type = Interim-Update\nAcct-Input-Octets = 1000\nAcct-Output-Octets = 2000\n"
        "Acct-Session-Time = 30\n3GPP2-Session-Continue = 1\n3GPP2-Active-Time = 25\n"
        "3GPP2-Inbound-Mobile-IP-Sig-Octets = 400\n3GPP2-Outbound-Mobile-IP-Sig-Octets = 300\n",
        common + "Acct-Status-Type = Stop\nAcct-Input-Octets = 1500\nAcct-Output-Octets = 2500\n"
        "Acct-Input-Gigawords = 1\nAcct-Session-Time = 60\nAcct-Terminate-Cause = User-Request\n",
    ):
        done = _radclient(require_tool, port, text)
        assert done.returncode == 0 and "Accounting-Response" in done.stdout, (done.stdout, done.stderr)
    (record,) = json.loads(_cli(live, "--json", "accounting", "list", "--user", NAI))["accounting"]
    assert record["session_id"] == session_id and record["acct_session_id"] == "pdsn-0001"
    assert (record["input_octets"], record["output_octets"], record["session_time"]) == (2**32 + 1500, 2500, 60)
    assert record["terminate_cause"] == "User-Request" and record["stopped"] is not None
    attributes = record["attributes"]
    assert attributes["3GPP2-Correlation-Id"] == "c0ffee01" and attributes["3GPP2-BSID"] == "bsid-42"
    assert attributes["3GPP2-Home-Agent-IP-Address"] == "127.0.0.2"
    # FreeRADIUS's key: md5 of User-Name,Acct-Session-Id,NAS-IP-Address,NAS-Identifier,NAS-Port-Id,NAS-Port
    import hashlib

    assert record["unique_id"] == hashlib.md5(f"{NAI},pdsn-0001,127.0.0.1,,,".encode()).hexdigest()
    shown = json.loads(_cli(live, "--json", "accounting", "show", record["unique_id"]))
    assert shown == record
    exported = list(
        csv.DictReader(io.StringIO(_cli(live, "accounting", "export", "--format", "csv", "--session", session_id)))
    )
    assert len(exported) == 1 and exported[0]["input_octets"] == str(2**32 + 1500)
    assert json.loads(exported[0]["attributes"])["3GPP2-Active-Time"] == 25
    document = json.loads(_cli(live, "accounting", "export", "--since", "2020-01-01T00:00:00Z"))
    assert document["format"] == "aaa-vpn-accounting" and len(document["records"]) == 1
    assert json.loads(_cli(live, "--json", "accounting", "list", "--until", "2020-01-01"))["accounting"] == []
    assert shutil.which("radclient") is not None
