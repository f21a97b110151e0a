"""The SQLite store: CRUD, references, generation, sessions and SPIs, concurrency,
migrations, and the import/export document (real SQLite files, no mocks)."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaa_vpn.model import (
    Client,
    ClientRole,
    EspTransform,
    Flavour,
    Gateway,
    GatewayMode,
    KeyMode,
    PskEncoding,
    QosClass,
    Service,
    Session,
    SessionWrite,
    SpiAllocation,
    User,
    ValidationError,
    VpnRecord,
    WriteKind,
    WriteOutcome,
)
from aaa_vpn.secret import Secret
from aaa_vpn.store import (
    AlreadyExists,
    DatabaseLocation,
    NotFound,
    ReferenceError_,
    SpiConflict,
    SqliteStore,
    SqlStore,
    StoreBusy,
    StoreError,
    init_store,
    open_store,
)
from aaa_vpn.store.crypto import SecretBox, read_key_file, secret_context
from aaa_vpn.store.schema import MIGRATIONS, SCHEMA_VERSION, Dialect, render
from aaa_vpn.store.transfer import export_document, import_document

REPO = Path(__file__).resolve().parent.parent
NAI = "mn1@home.example"


# -- records ---------------------------------------------------------------------------------


def make_user(nai: str = NAI, spi: int = 256) -> User:
    return User(
        nai=nai,
        home_agent=IPv4Address("192.0.2.2"),
        mn_aaa_secret=Secret(b"mn-aaa-" + nai.encode()),
        mn_ha_spi=spi,
        mn_ha_key=Secret(b"K" * 16),
        home_address=IPv4Address("198.51.100.10"),
    )


def make_client(name: str = "fa1", network: str = "192.0.2.1/32") -> Client:
    return Client(
        name=name,
        network=IPv4Network(network),
        secret=Secret(b"testing123"),
        role=ClientRole.FA,
        domain="visited.example",
        flavour=Flavour.THREEGPP2,
    )


def make_gateway(name: str = "gw1") -> Gateway:
    return Gateway(
        name=name,
        address=IPv4Address("203.0.113.1"),
        mode=GatewayMode.DYNAMIC,
        protected_prefixes=(IPv4Network("10.1.0.0/16"), IPv4Network("10.2.0.0/16")),
        gateway_key=Secret(b"G" * 32),
    )


def make_session(
    session_id: str = "s1", nai: str = NAI, spis: tuple[tuple[str, int], ...] = (), expires: float = 2000.0
) -> Session:
    return Session(
        session_id=session_id,
        nai=nai,
        session_root_key=Secret(b"R" * 32),
        epoch=1,
        home_address=IPv4Address("198.51.100.10"),
        home_agent=IPv4Address("192.0.2.2"),
        care_of_address=IPv4Address("192.0.2.1"),
        created=1000.0,
        expires=expires,
        spis=tuple(SpiAllocation(IPv4Address(node), spi, f"fa-ha:{node}") for node, spi in spis),
        foreign_domain="visited.example",
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "vpn.db"


@dataclass(frozen=True)
class Where:
    """A database of either engine and its key file."""

    db: DatabaseLocation
    key: Path

    def open(self) -> SqlStore:
        return open_store(self.db, self.key)


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    if request.param == "sqlite":
        return Where(tmp_path / "vpn.db", tmp_path / "vpn.db.key")
    return Where(request.getfixturevalue("pg_url"), tmp_path / "vpn.key")


@pytest.fixture
def store(where: Where) -> Iterator[SqlStore]:
    opened, _ = init_store(where.db, where.key)
    with opened:
        yield opened


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[SqliteStore]:
    opened, _ = init_store(db_path)
    assert isinstance(opened, SqliteStore)
    with opened:
        yield opened


@pytest.fixture
def provisioned(store: SqlStore) -> SqlStore:
    store.add_user(make_user())
    store.add_gateway(make_gateway())
    store.add_service(Service("gold"))
    store.add_qos(QosClass("voice", dscp=46))
    return store


# -- opening -------------------------------------------------------------------------------------


def test_pragmas(sqlite_store: SqlStore) -> None:
    store = sqlite_store
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert store.schema_version == SCHEMA_VERSION


def test_missing_database_is_not_created(tmp_path: Path, db_path: Path) -> None:
    init_store(db_path)[0].close()
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "typo.db", db_path.with_name("vpn.db.key"))
    assert not (tmp_path / "typo.db").exists()


def test_init_refuses_existing_files(db_path: Path) -> None:
    init_store(db_path)[0].close()
    with pytest.raises(StoreError, match="exists already"):
        init_store(db_path)
    db_path.unlink()
    with pytest.raises(StoreError, match="--existing-key"):
        init_store(db_path)
    store, created = init_store(db_path, existing_key=True)
    store.close()
    assert not created


def test_init_force_keeps_key_file(db_path: Path) -> None:
    store, _ = init_store(db_path)
    store.add_qos(QosClass("voice"))
    store.close()
    key = Path(f"{db_path}.key").read_bytes()
    store, created = init_store(db_path, force=True)
    with store:
        assert not created
        assert store.list_qos() == []
    assert Path(f"{db_path}.key").read_bytes() == key


def test_not_an_aaa_vpn_database(tmp_path: Path, db_path: Path) -> None:
    init_store(db_path)[0].close()
    key = Path(f"{db_path}.key")
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not an aaa_vpn database"):
        open_store(other, key)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        open_store(garbage, key)


# -- users ----------------------------------------------------------------------------------------


def test_user_crud(store: SqlStore) -> None:
    user = make_user()
    store.add_user(user)
    assert store.get_user(NAI) == user
    with pytest.raises(AlreadyExists, match=NAI):
        store.add_user(user)
    changed = dataclasses.replace(user, mn_ha_key=Secret(b"N" * 20), home_address=None, enabled=False)
    store.update_user(changed)
    assert store.get_user(NAI) == changed
    store.add_user(make_user("a@home.example"))
    assert [u.nai for u in store.list_users()] == ["a@home.example", NAI]
    store.delete_user(NAI)
    with pytest.raises(NotFound):
        store.get_user(NAI)
    with pytest.raises(NotFound):
        store.delete_user(NAI)
    with pytest.raises(NotFound):
        store.update_user(user)


def test_client_crud(store: SqlStore) -> None:
    client = make_client()
    store.add_client(client)
    assert store.get_client("fa1") == client
    with pytest.raises(AlreadyExists, match=r"network 192\.0\.2\.1/32"):
        store.add_client(make_client("fa2"))
    store.add_client(make_client("fa2", "192.0.2.128/25"))
    with pytest.raises(AlreadyExists, match="network"):
        store.update_client(dataclasses.replace(client, network=IPv4Network("192.0.2.128/25")))
    changed = dataclasses.replace(
        client,
        role=ClientRole.FOREIGN_AAA,
        coa_port=1700,
        require_message_authenticator=False,
        psk_encoding=PskEncoding.PLAIN,
        require_coa_message_authenticator=True,
    )
    store.update_client(changed)
    assert store.get_client("fa1") == changed
    assert [c.name for c in store.list_clients()] == ["fa1", "fa2"]
    store.delete_client("fa1")
    with pytest.raises(NotFound):
        store.get_client("fa1")
    with pytest.raises(NotFound):
        store.delete_client("fa1")


def test_gateway_service_qos_crud(store: SqlStore) -> None:
    gateway = make_gateway()
    store.add_gateway(gateway)
    assert store.get_gateway("gw1") == gateway
    store.update_gateway(
        dataclasses.replace(gateway, mode=GatewayMode.STATIC, protected_prefixes=(IPv4Network("10.9.0.0/16"),))
    )
    assert store.get_gateway("gw1").protected_prefixes == (IPv4Network("10.9.0.0/16"),)
    with pytest.raises(AlreadyExists):
        store.add_gateway(gateway)

    service = Service(
        "gold", key_mode=KeyMode.IKEV2, esp_transform=EspTransform.AES_CBC_128_HMAC_SHA256, sa_lifetime=600
    )
    store.add_service(service)
    assert store.get_service("gold") == service
    store.update_service(dataclasses.replace(service, ike_lifetime=7200))
    assert store.list_services()[0].ike_lifetime == 7200

    store.add_qos(QosClass("voice", dscp=46, rate_kbps=512))
    store.update_qos(QosClass("voice", dscp=34))
    assert store.list_qos() == [QosClass("voice", dscp=34)]

    for delete, getter, name in (
        (store.delete_gateway, store.get_gateway, "gw1"),
        (store.delete_service, store.get_service, "gold"),
        (store.delete_qos, store.get_qos, "voice"),
    ):
        delete(name)
        with pytest.raises(NotFound):
            getter(name)
        with pytest.raises(NotFound):
            delete(name)
    with pytest.raises(NotFound):
        store.update_service(service)
    with pytest.raises(NotFound):
        store.update_qos(QosClass("x"))


def test_vpn_record_crud(provisioned: SqlStore) -> None:
    store = provisioned
    record = store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold", "voice"))
    assert record.id is not None
    assert store.get_vpn_record(record.id) == record
    with pytest.raises(AlreadyExists, match=f"id {record.id}"):
        store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold"))
    second = store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.2.0.0/16"), "gw1", "gold"))
    assert store.list_vpn_records(NAI) == [record, second]
    assert store.list_vpn_records("nobody@home.example") == []
    store.update_vpn_record(dataclasses.replace(second, qos="voice"))
    assert store.get_vpn_record(second.id or 0).qos == "voice"
    with pytest.raises(AlreadyExists):
        store.update_vpn_record(dataclasses.replace(second, correspondent=IPv4Network("10.1.0.0/16")))
    store.delete_vpn_record(record.id)
    with pytest.raises(NotFound):
        store.get_vpn_record(record.id)
    with pytest.raises(NotFound):
        store.delete_vpn_record(record.id)
    # AUTOINCREMENT: ids are never reused.
    third = store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.3.0.0/16"), "gw1", "gold"))
    assert (third.id or 0) > (second.id or 0)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (VpnRecord("nobody@home.example", IPv4Network("10.1.0.0/16"), "gw1", "gold"), "user 'nobody@home.example'"),
        (VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw9", "gold"), "gateway 'gw9'"),
        (VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "silver"), "service 'silver'"),
        (VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold", "video"), "QoS class 'video'"),
    ],
)
def test_vpn_record_names_missing_record(provisioned: SqlStore, record: VpnRecord, message: str) -> None:
    with pytest.raises(ReferenceError_, match=f"{message}, which does not exist"):
        provisioned.add_vpn_record(record)
    assert provisioned.list_vpn_records() == []
    good = provisioned.add_vpn_record(VpnRecord(NAI, IPv4Network("10.5.0.0/16"), "gw1", "gold"))
    with pytest.raises(ReferenceError_, match=message):
        provisioned.update_vpn_record(dataclasses.replace(record, id=good.id))


def test_restrict_delete_of_referenced_records(provisioned: SqlStore) -> None:
    store = provisioned
    record = store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold", "voice"))
    for delete, what in (
        (store.delete_gateway, "gateway 'gw1'"),
        (store.delete_service, "service 'gold'"),
        (store.delete_qos, "QoS class 'voice'"),
    ):
        name = what.split("'")[1]
        with pytest.raises(ReferenceError_, match=f"{what} is used by VPN record\\(s\\) {record.id} \\({NAI}\\)"):
            delete(name)
    assert store.get_gateway("gw1") and store.get_service("gold") and store.get_qos("voice")


def test_delete_user_cascades_to_vpn_records_and_sessions(provisioned: SqlStore) -> None:
    store = provisioned
    store.add_user(make_user("other@home.example", spi=300))
    store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold"))
    kept = store.add_vpn_record(VpnRecord("other@home.example", IPv4Network("10.1.0.0/16"), "gw1", "gold"))
    store.put_session(make_session("s1", spis=(("192.0.2.1", 4096),)))
    store.put_session(make_session("s2", nai="other@home.example"))
    store.delete_user(NAI)
    assert store.list_vpn_records() == [kept]
    assert [s.session_id for s in store.list_sessions()] == ["s2"]
    assert store.spis_in_use(IPv4Address("192.0.2.1")) == []
    # The gateway is still restricted by the other user's record.
    with pytest.raises(ReferenceError_):
        store.delete_gateway("gw1")


# -- generation -------------------------------------------------------------------------------------


def test_generation_moves_on_every_provisioning_change(store: SqlStore) -> None:
    seen = [store.generation()]

    def moved() -> None:
        now = store.generation()
        assert now != seen[-1]
        seen.append(now)

    user = make_user()
    store.add_user(user)
    moved()
    store.update_user(dataclasses.replace(user, enabled=False))
    moved()
    store.add_client(make_client())
    moved()
    store.update_client(dataclasses.replace(make_client(), domain="x.example"))
    moved()
    store.add_gateway(make_gateway())
    moved()
    store.add_service(Service("gold"))
    moved()
    store.add_qos(QosClass("voice"))
    moved()
    store.update_qos(QosClass("voice", dscp=1))
    moved()
    record = store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold"))
    moved()
    store.update_vpn_record(dataclasses.replace(record, qos="voice"))
    moved()
    store.delete_vpn_record(record.id or 0)
    moved()
    store.delete_client("fa1")
    moved()
    store.delete_user(NAI)
    moved()


def test_generation_does_not_move_on_session_writes(provisioned: SqlStore) -> None:
    store = provisioned
    before = store.generation()
    store.put_session(make_session("s1", spis=(("192.0.2.1", 4096),), expires=10.0))
    store.put_session(make_session("s2", spis=(("192.0.2.1", 4097),)), replaces=["s1"])
    with pytest.raises(SpiConflict):
        store.put_session(make_session("s3", spis=(("192.0.2.1", 4097),)))
    store.expire_sessions(5000.0)
    store.put_session(make_session("s4"))
    store.delete_session("s4")
    assert store.generation() == before


def test_generation_seen_by_another_store_object(where: Where, store: SqlStore) -> None:
    other = where.open()
    with other:
        before = other.generation()
        store.add_qos(QosClass("voice"))
        assert other.generation() != before


def test_failed_write_changes_nothing(provisioned: SqlStore) -> None:
    before = provisioned.generation()
    with pytest.raises(ReferenceError_):
        provisioned.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw9", "gold"))
    with pytest.raises(AlreadyExists):
        provisioned.add_user(make_user())
    assert provisioned.generation() == before


# -- sessions ---------------------------------------------------------------------------------------


def test_session_round_trip_and_lookup(store: SqlStore) -> None:
    session = make_session("s1", spis=(("192.0.2.1", 4096), ("192.0.2.2", 4096), ("192.0.2.1", 300)))
    store.put_session(session)
    assert store.get_session("s1") == session  # SPIs keep their order
    store.put_session(make_session("s2", nai="b@home.example"))
    assert store.find_sessions(NAI) == [session]
    assert [s.session_id for s in store.list_sessions()] == ["s1", "s2"]
    assert list(store.spis_in_use(IPv4Address("192.0.2.1"))) == [300, 4096]
    assert list(store.spis_in_use(IPv4Address("192.0.2.9"))) == []
    with pytest.raises(NotFound):
        store.get_session("nope")
    store.delete_session("s1")
    assert list(store.spis_in_use(IPv4Address("192.0.2.1"))) == []
    with pytest.raises(NotFound):
        store.delete_session("s1")


def test_put_session_again_replaces_it_with_its_own_spis(store: SqlStore) -> None:
    store.put_session(make_session("s1", spis=(("192.0.2.1", 4096),)))
    moved = dataclasses.replace(
        make_session("s1", spis=(("192.0.2.1", 4096), ("192.0.2.7", 5000))), care_of_address=IPv4Address("192.0.2.7")
    )
    store.put_session(moved)
    assert store.get_session("s1") == moved


def test_put_session_replaces(store: SqlStore) -> None:
    store.put_session(make_session("old", spis=(("192.0.2.1", 4096),)))
    store.put_session(make_session("other", spis=(("192.0.2.1", 4097),)))
    # The new session may reuse the replaced session's SPI: it is freed first.
    store.put_session(make_session("new", spis=(("192.0.2.1", 4096),)), replaces=["old", "never-existed"])
    assert [s.session_id for s in store.list_sessions()] == ["new", "other"]
    assert list(store.spis_in_use(IPv4Address("192.0.2.1"))) == [4096, 4097]


def test_spi_conflict_stores_nothing(store: SqlStore) -> None:
    store.put_session(make_session("old", spis=(("192.0.2.1", 4096),)))
    store.put_session(make_session("holder", spis=(("192.0.2.2", 7000),)))
    attempt = make_session("new", spis=(("192.0.2.1", 4096), ("192.0.2.3", 1), ("192.0.2.2", 7000)))
    with pytest.raises(SpiConflict, match=r"SPI 7000 \(0x00001b58\) is already allocated on node 192.0.2.2"):
        store.put_session(attempt, replaces=["old"])
    # Nothing of the attempt is stored, and the replaced session is still there.
    assert [s.session_id for s in store.list_sessions()] == ["holder", "old"]
    assert list(store.spis_in_use(IPv4Address("192.0.2.3"))) == []
    assert store.get_session("old").spis == make_session("old", spis=(("192.0.2.1", 4096),)).spis


def test_expire_sessions(store: SqlStore) -> None:
    for number, expires in enumerate((10.0, 20.0, 30.0)):
        store.put_session(make_session(f"s{number}", spis=(("192.0.2.1", 4096 + number),), expires=expires))
    assert [store.count_live_sessions(now) for now in (5.0, 20.0, 25.0, 31.0)] == [3, 2, 1, 0]  # for the metrics
    assert store.expire_sessions(20.0) == 1  # strictly before now
    assert store.expire_sessions(25.0) == 1
    assert [s.session_id for s in store.list_sessions()] == ["s2"]
    assert list(store.spis_in_use(IPv4Address("192.0.2.1"))) == [4098]
    assert store.expire_sessions(25.0) == 0


# -- concurrency ----------------------------------------------------------------------------------------


def test_two_store_objects_in_two_threads(where: Where, store: SqlStore) -> None:
    errors: list[BaseException] = []

    def writer(prefix: str, base: int) -> None:
        try:
            with where.open() as own:
                for number in range(50):
                    own.put_session(make_session(f"{prefix}{number}", spis=(("192.0.2.1", base + number),)))
                    own.get_session(f"{prefix}{number}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p, b)) for p, b in (("a", 1000), ("b", 2000))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_sessions()) == 100


_WORKER = textwrap.dedent(
    """
    import sys
    from ipaddress import IPv4Address
    from pathlib import Path
    from aaa_vpn.model import Session, SpiAllocation
    from aaa_vpn.secret import Secret
    from aaa_vpn.store import SpiConflict, open_store

    db, key, worker = sys.argv[1], sys.argv[2], sys.argv[3]
    won = 0
    with open_store(db if db.startswith("postgresql:") else Path(db), key) as store:
        for number in range(60):
            spis = (SpiAllocation(IPv4Address("192.0.2.1"), 10000 + number, "x"),)
            session = Session(f"{worker}-{number}", "mn1@home.example", Secret(b"R" * 32), 1,
                              IPv4Address("198.51.100.10"), IPv4Address("192.0.2.2"),
                              IPv4Address("192.0.2.1"), 1.0, 2.0, spis)
            try:
                store.put_session(session)
                won += 1
            except SpiConflict:
                pass
            # And one SPI that is this worker's alone.
            own = Session(f"{worker}-own-{number}", "mn1@home.example", Secret(b"R" * 32), 1,
                          IPv4Address("198.51.100.10"), IPv4Address("192.0.2.2"),
                          IPv4Address("192.0.2.1"), 1.0, 2.0,
                          (SpiAllocation(IPv4Address("192.0.2.9"), int(worker) * 1000 + number + 256, "y"),))
            store.put_session(own)
    print(won)
    """
)


def test_two_processes_racing_for_the_same_spis(where: Where, store: SqlStore) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(where.db), str(where.key), str(worker)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in (1, 2, 3)
    ]
    results = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr
    # Every contested SPI went to exactly one worker; every uncontested one was stored.
    assert sum(int(out) for out, _ in results) == 60
    assert list(store.spis_in_use(IPv4Address("192.0.2.1"))) == list(range(10000, 10060))
    assert len(store.spis_in_use(IPv4Address("192.0.2.9"))) == 180
    assert len(store.list_sessions()) == 240


# -- migrations ------------------------------------------------------------------------------------------


def _version_1_database(db_path: Path) -> None:
    """A database as schema version 1 left it, with one user in it."""
    Path(f"{db_path}.key").write_bytes(bytes(range(32)))
    Path(f"{db_path}.key").chmod(0o600)
    box = SecretBox(read_key_file(Path(f"{db_path}.key")))
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN")
    for statement in render(MIGRATIONS[0], Dialect.SQLITE):
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (box.key_check,))
    conn.execute(
        "INSERT INTO users VALUES (?, '192.0.2.2', NULL, 2, ?, 256, ?, 1)",
        (
            NAI,
            box.seal(b"aaa-secret", secret_context("users", "mn_aaa_secret", NAI)),
            box.seal(b"H" * 16, secret_context("users", "mn_ha_key", NAI)),
        ),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()


def _indexes(db_path: Path) -> set[str]:
    conn = sqlite3.connect(db_path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    conn.close()
    return names


def test_migration_from_version_1(db_path: Path) -> None:
    _version_1_database(db_path)
    assert "sessions_by_expiry" not in _indexes(db_path)
    with pytest.raises(StoreError, match="db migrate"):
        open_store(db_path, migrate=False)
    with open_store(db_path) as store:
        assert store.opened_version == 1
        assert store.schema_version == SCHEMA_VERSION == 6
        user = store.get_user(NAI)
        assert user.mn_ha_key == Secret(b"H" * 16)
        assert user.home_address is None
    assert {"sessions_by_nai", "sessions_by_expiry", "vpn_records_by_gateway", "audit_log_by_time"} <= _indexes(db_path)
    with open_store(db_path) as store:
        assert store.opened_version == SCHEMA_VERSION
        # step 6: web credentials and what users may choose go with their user; the audit log stays
        store.set_web_credential(NAI, "scrypt$verifier", 1.0)
        store.set_self_service(NAI, {"gateway": ["gw1"], "service": [], "qos": []})
        store.append_audit(1.0, "cli:test", "users.web-credential.set", NAI, "{}")
        assert store.get_web_credential(NAI) == "scrypt$verifier"
        store.delete_user(NAI)
        assert store.get_web_credential(NAI) is None
        assert store.get_self_service(NAI) == {"gateway": [], "service": [], "qos": []}
        assert [row[3] for row in store.list_audit()] == ["users.web-credential.set"]


def test_migration_from_version_4_keeps_sessions_and_clients(db_path: Path) -> None:
    """Step 5: a session's epoch started when it was keyed, it has no
    identification attributes yet; a client sends the 3GPP2 pre-shared
    secret salt-encrypted and takes CoA answers without Message-Authenticator."""
    _version_1_database(db_path)
    box = SecretBox(read_key_file(Path(f"{db_path}.key")))
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN")
    for step in MIGRATIONS[1:4]:
        for statement in render(step, Dialect.SQLITE):
            conn.execute(statement)
    conn.execute(
        "INSERT INTO clients (name, network, secret, role, domain, coa_port, flavour, require_message_authenticator)"
        " VALUES ('fa1', '192.0.2.1/32', ?, 'fa', '', 3799, '3gpp2', 1)",
        (box.seal(b"testing123", secret_context("clients", "secret", "fa1")),),
    )
    conn.execute(
        "INSERT INTO sessions (session_id, nai, session_root_key, epoch, home_address, home_agent,"
        " care_of_address, created, expires, foreign_domain, stationary_epoch, keyed_at)"
        " VALUES ('s1', ?, ?, 3, '198.51.100.10', '192.0.2.2', '192.0.2.1', 1000, 2000, '', 3, 1500)",
        (NAI, box.seal(b"R" * 32, secret_context("sessions", "session_root_key", "s1"))),
    )
    conn.execute("PRAGMA user_version = 4")
    conn.execute("COMMIT")
    conn.close()
    with open_store(db_path) as store:
        assert store.opened_version == 4 and store.schema_version == SCHEMA_VERSION
        session = store.get_session("s1")
        assert (session.keyed_at, session.epoch_started) == (1500.0, 1500.0)
        assert (session.fa_identification, session.ha_identification) == (b"", b"")
        client = store.get_client("fa1")
        assert client.psk_encoding is PskEncoding.SALT and client.require_coa_message_authenticator is False


def test_identification_attributes_are_stored_with_the_session(where: Where, provisioned: SqlStore) -> None:
    """roles/home_aaa.py rule 13 on either engine: raw attributes in, the same
    bytes out; a renewal or an IDENTIFY write changes them at the session's
    epoch only, and marks the user (another process's copy is not trusted)."""
    store = provisioned
    fa_id = bytes((4, 6)) + IPv4Address("192.0.2.1").packed + bytes((44, 6)) + b"0001"
    session = dataclasses.replace(make_session(), epoch_started=1234.5, fa_identification=fa_id)
    assert store.apply_session_writes([SessionWrite(WriteKind.CREATE, "s1", session)]) == [WriteOutcome.STORED]
    assert store.get_session("s1") == session
    # An SQLite store marks its own file; a PostgreSQL store marks through
    # its listener (tests/test_postgres_nodes.py), not opened here.
    marks = store.session_marks() if isinstance(store, SqliteStore) else None
    stamp = marks.stamp(NAI) if marks is not None else 0
    ha_id = bytes((32, 5)) + b"ha1"
    new_fa_id = bytes((4, 6)) + IPv4Address("192.0.2.1").packed + bytes((44, 6)) + b"0002"
    outcomes = store.apply_session_writes(
        [
            SessionWrite(WriteKind.IDENTIFY, "s1", expected_epoch=2, ha_identification=ha_id),  # wrong epoch
            SessionWrite(WriteKind.IDENTIFY, "s1", expected_epoch=1, ha_identification=ha_id),
            SessionWrite(WriteKind.RENEW, "s1", expected_epoch=1, expires=2500.0, fa_identification=new_fa_id),
        ]
    )
    assert outcomes == [WriteOutcome.CONFLICT, WriteOutcome.STORED, WriteOutcome.STORED]
    assert marks is None or marks.stamp(NAI) != stamp
    with where.open() as other:
        stored = other.get_session("s1")
    assert (stored.fa_identification, stored.ha_identification, stored.expires) == (new_fa_id, ha_id, 2500.0)
    assert stored.epoch_started == 1234.5
    stamp = marks.stamp(NAI) if marks is not None else 0
    store.apply_session_writes([SessionWrite(WriteKind.RENEW, "s1", expected_epoch=1, expires=2600.0)])
    assert marks is None or marks.stamp(NAI) == stamp  # a plain renewal marks nothing (store/marks.py rule 2)
    assert store.get_session("s1").fa_identification == new_fa_id


def test_failed_migration_leaves_database_as_it_was(db_path: Path) -> None:
    _version_1_database(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE INDEX sessions_by_expiry ON users (nai)")  # step 2 will collide with it
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="already exists"):
        open_store(db_path)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "sessions_by_nai" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    init_store(db_path)[0].close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this aaa_vpn knows"):
        open_store(db_path)


def test_check_finds_nothing_on_a_good_database(provisioned: SqlStore) -> None:
    provisioned.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold"))
    provisioned.put_session(make_session("s1", spis=(("192.0.2.1", 4096),)))
    assert provisioned.check() == []
    assert provisioned.counts()["session_spis"] == 1


# -- import / export --------------------------------------------------------------------------------------


def _document(store: SqlStore) -> dict[str, object]:
    return export_document(store, with_secrets=True)


def test_import_merge_keeps_secrets_and_replace_deletes(provisioned: SqlStore, tmp_path: Path) -> None:
    store = provisioned
    store.add_client(make_client())
    store.add_vpn_record(VpnRecord(NAI, IPv4Network("10.1.0.0/16"), "gw1", "gold"))
    without = export_document(store)
    assert "mn_ha_key" not in without["users"][0]
    target, _ = init_store(tmp_path / "target.db")
    with target:
        with pytest.raises(ValidationError, match=r"gateways\[0\] \(gw1\): field 'gateway_key' is required"):
            import_document(target, without)
        assert target.list_qos() == []  # all or nothing
    # Merge into the source: secrets kept, nothing changed.
    summary = import_document(store, without)
    assert sum(summary.unchanged.values()) == 6 and sum(summary.updated.values()) == 0
    assert store.get_user(NAI) == make_user()
    # Replace with a smaller document deletes the rest (dependents first).
    small = {"format": "aaa-vpn", "version": 1, "qos_classes": [{"name": "voice", "dscp": 46}]}
    summary = import_document(store, small, replace=True)
    assert summary.deleted == {
        "qos_classes": 0,
        "services": 1,
        "gateways": 1,
        "clients": 1,
        "users": 1,
        "vpn_records": 1,
    }
    assert store.list_users() == [] and store.list_qos() == [QosClass("voice", dscp=46)]


def test_import_is_atomic(provisioned: SqlStore) -> None:
    before = _document(provisioned)
    generation = provisioned.generation()
    document = {
        "format": "aaa-vpn",
        "version": 1,
        "qos_classes": [{"name": "bulk", "dscp": 8}],
        "services": [{"name": "gold", "sa_lifetime": 600}],
        "vpn_records": [
            {"nai": NAI, "correspondent": "10.1.0.0/16", "gateway": "gw1", "service": "gold"},
            {"nai": NAI, "correspondent": "10.2.0.0/16", "gateway": "nope", "service": "gold"},
        ],
    }
    with pytest.raises(ReferenceError_, match="gateway 'nope'"):
        import_document(provisioned, document)
    assert _document(provisioned) == before
    assert provisioned.generation() == generation


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"format": "other", "version": 1}, "format"),
        ({"format": "aaa-vpn", "version": 2}, "unsupported import format version 2"),
        ({"format": "aaa-vpn", "version": 1, "userz": []}, "unknown top-level field"),
        ({"format": "aaa-vpn", "version": 1, "qos_classes": [{"name": "a", "dcsp": 1}]}, "unknown field"),
        ({"format": "aaa-vpn", "version": 1, "qos_classes": [{"name": "a", "dscp": "1"}]}, "must be an integer"),
        ({"format": "aaa-vpn", "version": 1, "qos_classes": [{"name": "a"}, {"name": "a"}]}, "duplicate"),
        (
            {"format": "aaa-vpn", "version": 1, "services": [{"name": "s", "key_mode": "psk"}]},
            "must be one of 'manual', 'ikev2'",
        ),
        (
            {
                "format": "aaa-vpn",
                "version": 1,
                "clients": [{"name": "c", "network": "192.0.2.0/24", "role": "fa", "secret": {"hex": "zz"}}],
            },
            "not hexadecimal",
        ),
    ],
)
def test_import_rejects_bad_documents(store: SqlStore, document: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        import_document(store, document)


_names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_secret = st.binary(min_size=32, max_size=40).map(Secret)
_octet = st.integers(min_value=1, max_value=254)
_address = st.builds(lambda a, b: IPv4Address(f"10.{a}.{b}.1"), _octet, _octet)
_network = st.builds(lambda a, b: IPv4Network(f"172.{a % 16 + 16}.{b}.0/24"), _octet, _octet)


@st.composite
def _provisioning(draw: st.DrawFn) -> dict[str, list[Any]]:
    qos = draw(
        st.lists(
            st.builds(QosClass, _names, st.integers(0, 63), st.integers(0, 10**6)),
            max_size=3,
            unique_by=lambda q: q.name,
        )
    )
    services = draw(
        st.lists(
            st.builds(
                Service,
                _names,
                st.sampled_from(KeyMode),
                st.sampled_from(EspTransform),
                st.just("aes256gcm16-prfsha256-x25519"),
                st.integers(60, 10**6),
                st.integers(60, 10**6),
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda s: s.name,
        )
    )
    gateways = draw(
        st.lists(
            st.builds(
                Gateway,
                _names,
                _address,
                st.sampled_from(GatewayMode),
                st.lists(_network, min_size=1, max_size=3).map(tuple),
                _secret,
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda g: g.name,
        )
    )
    clients = draw(
        st.lists(
            st.builds(
                Client,
                _names,
                _network,
                _secret,
                st.sampled_from(ClientRole),
                st.just("visited.example"),
                st.integers(1, 65535),
                st.sampled_from(Flavour),
                st.booleans(),
            ),
            max_size=3,
            unique_by=(lambda c: c.name, lambda c: c.network),
        )
    )
    users = draw(
        st.lists(
            st.builds(
                User,
                _names.map(lambda n: f"{n}@home.example"),
                _address,
                _secret,
                st.integers(256, 2**32 - 1),
                _secret,
                st.one_of(st.none(), _address),
                st.integers(0, 2**32 - 1),
                st.booleans(),
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda u: u.nai,
        )
    )
    records = draw(
        st.lists(
            st.builds(
                VpnRecord,
                st.sampled_from([u.nai for u in users]),
                _network,
                st.sampled_from([g.name for g in gateways]),
                st.sampled_from([s.name for s in services]),
                st.one_of(st.none(), st.sampled_from([q.name for q in qos])) if qos else st.none(),
            ),
            max_size=5,
            unique_by=lambda r: (r.nai, r.correspondent),
        )
    )
    return {
        "qos": qos,
        "services": services,
        "gateways": gateways,
        "clients": clients,
        "users": users,
        "records": records,
    }


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_provisioning())
def test_export_import_round_trip(data: dict[str, list[Any]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        source, _ = init_store(Path(directory) / "source.db")
        target, _ = init_store(Path(directory) / "target.db")
        with source, target:
            for kind, add in (
                ("qos", source.add_qos),
                ("services", source.add_service),
                ("gateways", source.add_gateway),
                ("clients", source.add_client),
                ("users", source.add_user),
                ("records", source.add_vpn_record),
            ):
                for record in data[kind]:
                    add(record)
            document = _document(source)
            summary = import_document(target, document)
            assert sum(summary.added.values()) == sum(len(v) for v in data.values())
            assert _document(target) == document
            assert target.list_users() == source.list_users()
            assert target.list_gateways() == source.list_gateways()
            assert target.list_clients() == source.list_clients()
            # Importing the same again changes nothing, not even the generation.
            generation = target.generation()
            summary = import_document(target, document, replace=True)
            assert sum(summary.unchanged.values()) == sum(len(v) for v in data.values())
            assert target.generation() == generation


# -- a database that becomes writable; conditional session writes ---------------------------------


def test_a_database_opened_read_only_is_written_once_it_becomes_writable(tmp_path: Path) -> None:
    """SQLite's mode=rw opens a write-protected file read-only, silently; the
    store must not stay so after the file becomes writable. Run as an
    unprivileged user (root writes anything)."""
    import os
    import pwd
    import shutil

    if os.geteuid() != 0:
        pytest.skip("needs root, to act as the user nobody")
    # pytest's own directories are root's alone; nobody needs a path it can walk
    directory = Path(tempfile.mkdtemp(prefix="aaa_vpn-readonly-"))
    db, key = directory / "vpn.db", directory / "vpn.key"
    store, _created = init_store(db, key)
    store.close()
    nobody = pwd.getpwnam("nobody")
    for path in (directory, db, key, *directory.glob("vpn.db-*")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    db.chmod(0o444)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody
        os.close(read)
        report: list[str] = []
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            opened = open_store(db, key)
            try:
                opened.add_qos(QosClass("while-read-only"))
                report.append("written while read-only")
            except StoreError as exc:
                report.append(f"refused: {exc}")
            db.chmod(0o644)
            session = Session(
                "s1",
                "mn1@home.example",
                Secret(bytes(32)),
                1,
                IPv4Address("198.51.100.1"),
                IPv4Address("192.0.2.2"),
                IPv4Address("192.0.2.1"),
                0.0,
                100.0,
            )
            outcomes = opened.apply_session_writes([SessionWrite(WriteKind.CREATE, "s1", session)])
            report.append(f"session write: {outcomes[0].value}")
            opened.add_qos(QosClass("afterwards"))
            report.append("qos: " + ",".join(q.name for q in opened.list_qos()))
        except BaseException as exc:  # reported to the parent
            report.append(f"child failed: {type(exc).__name__}: {exc}")
        os.write(write, "\n".join(report).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        lines = pipe.read().splitlines()
    os.waitpid(pid, 0)
    shutil.rmtree(directory)
    assert lines[0].startswith("refused: ") and "read-only" in lines[0], lines
    # the first write after the file became writable succeeds (the store opened it again)
    assert lines[1:] == ["session write: stored", "qos: afterwards"], lines


def test_conditional_session_writes_each_on_their_own(provisioned: SqlStore) -> None:
    store = provisioned
    base = Session(
        "s1",
        "mn1@home.example",
        Secret(bytes(32)),
        1,
        IPv4Address("198.51.100.1"),
        IPv4Address("192.0.2.2"),
        IPv4Address("192.0.2.1"),
        0.0,
        100.0,
        spis=(SpiAllocation(IPv4Address("192.0.2.1"), 4000, "fa-ha@192.0.2.1"),),
    )
    other = dataclasses.replace(
        base,
        session_id="s2",
        nai="mn2@home.example",
        spis=(SpiAllocation(IPv4Address("192.0.2.1"), 4000, "fa-ha@192.0.2.1"),),
    )
    assert store.apply_session_writes([SessionWrite(WriteKind.CREATE, "s1", base)]) == [WriteOutcome.STORED]
    moved = dataclasses.replace(base, epoch=2, care_of_address=IPv4Address("192.0.2.5"), expires=200.0)
    outcomes = store.apply_session_writes(
        [
            SessionWrite(WriteKind.RENEW, "s1", expected_epoch=2, expires=300.0),  # not at epoch 2: conflict
            SessionWrite(WriteKind.CREATE, "s2", other),  # SPI 4000 on 192.0.2.1 is s1's: taken
            SessionWrite(WriteKind.REPLACE, "s1", moved, expected_epoch=1),  # stored
            SessionWrite(WriteKind.REPLACE, "s1", moved, expected_epoch=1),  # epoch moved meanwhile: conflict
            SessionWrite(WriteKind.RENEW, "s1", expected_epoch=2, expires=250.0),  # stored
        ]
    )
    assert outcomes == [
        WriteOutcome.CONFLICT,
        WriteOutcome.SPI_TAKEN,
        WriteOutcome.STORED,
        WriteOutcome.CONFLICT,
        WriteOutcome.STORED,
    ]
    (session,) = store.list_sessions()
    assert (session.session_id, session.epoch, str(session.care_of_address), session.expires) == (
        "s1",
        2,
        "192.0.2.5",
        250.0,
    )
    assert store.apply_session_writes([SessionWrite(WriteKind.DELETE, "s1", expected_epoch=1)]) == [
        WriteOutcome.CONFLICT
    ]
    assert store.apply_session_writes([SessionWrite(WriteKind.DELETE, "s1")]) == [WriteOutcome.STORED]


def test_a_writer_holding_the_lock_past_the_busy_timeout_is_a_store_busy_error(tmp_path: Path) -> None:
    db, key = tmp_path / "vpn.db", tmp_path / "vpn.key"
    init_store(db, key)[0].close()
    fast = open_store(db, key, busy_timeout_ms=100)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy, match="locked by another writer for more than 100 ms"):
            fast.apply_session_writes([SessionWrite(WriteKind.DELETE, "nothing")])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert fast.apply_session_writes([SessionWrite(WriteKind.DELETE, "nothing")]) == [WriteOutcome.CONFLICT]
    fast.close()
