"""Secrets at rest: the key file, AES-256-GCM sealing, and what the database file holds."""

from __future__ import annotations

import os
import sqlite3
import stat
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aaa_vpn.model import Client, ClientRole, Gateway, GatewayMode, Session, User
from aaa_vpn.secret import Secret
from aaa_vpn.store import KeyFileError, StoreError, init_store, open_store
from aaa_vpn.store.crypto import (
    KEY_SIZE,
    SecretBox,
    create_key_file,
    read_key_file,
    secret_context,
)

BOX = SecretBox(bytes(range(32)))

# Distinctive plaintexts, easy to grep for in the raw file bytes.
MN_AAA = b"MNAAA-plaintext-marker-0001"
MN_HA = b"MNHA-plaintext-marker-00002"
CLIENT = b"CLIENT-plaintext-marker-003"
GW_KEY = b"GWKEY-plaintext-marker-0004"
SRK = b"SRK-plaintext-marker-000000005"


# -- SecretBox -------------------------------------------------------------------------------


@given(plaintext=st.binary(max_size=200), row=st.text(max_size=40).filter(lambda s: "\x00" not in s))
def test_seal_open_round_trip(plaintext: bytes, row: str) -> None:
    context = secret_context("users", "mn_ha_key", row)
    blob = BOX.seal(plaintext, context)
    assert BOX.open(blob, context) == plaintext
    if len(plaintext) >= 8:
        assert plaintext not in blob


@given(plaintext=st.binary(min_size=1, max_size=64))
def test_every_seal_is_fresh(plaintext: bytes) -> None:
    context = secret_context("clients", "secret", "fa1")
    assert BOX.seal(plaintext, context) != BOX.seal(plaintext, context)


def test_other_row_column_or_table_fails() -> None:
    blob = BOX.seal(b"secret", secret_context("users", "mn_ha_key", "a@x.example"))
    for context in (
        secret_context("users", "mn_ha_key", "b@x.example"),
        secret_context("users", "mn_aaa_secret", "a@x.example"),
        secret_context("sessions", "mn_ha_key", "a@x.example"),
    ):
        with pytest.raises(StoreError, match="cannot be decrypted"):
            BOX.open(blob, context)


@given(position=st.integers(min_value=0, max_value=60))
def test_any_flipped_bit_fails(position: int) -> None:
    context = secret_context("gateways", "gateway_key", "gw1")
    blob = bytearray(BOX.seal(b"k" * 16, context))
    blob[position % len(blob)] ^= 0x01
    with pytest.raises(StoreError):
        BOX.open(bytes(blob), context)


def test_other_key_fails_and_malformed_blob_fails() -> None:
    context = secret_context("clients", "secret", "fa1")
    blob = BOX.seal(b"testing123", context)
    with pytest.raises(StoreError, match="another key file"):
        SecretBox(b"\x01" * KEY_SIZE).open(blob, context)
    with pytest.raises(StoreError, match="malformed"):
        BOX.open(b"\x01short", context)


def test_key_check_identifies_the_key() -> None:
    assert BOX.matches(SecretBox(bytes(range(32))).key_check)
    assert not BOX.matches(SecretBox(b"\x00" * 32).key_check)
    assert "redacted" in repr(BOX)
    with pytest.raises(KeyFileError):
        SecretBox(b"short")


# -- key file --------------------------------------------------------------------------------


def test_create_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "vpn.key"
    create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes()
    assert len(key) == KEY_SIZE
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_key_file(path)
    assert path.read_bytes() == key
    assert read_key_file(path) == key


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vpn.key"
    create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="group or others"):
        read_key_file(path)


def test_key_file_forms(tmp_path: Path) -> None:
    hex_file = tmp_path / "hex.key"
    hex_file.write_text(bytes(range(32)).hex() + "\n")
    os.chmod(hex_file, 0o600)
    assert read_key_file(hex_file) == bytes(range(32))
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"too short")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not a key"):
        read_key_file(bad)
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "missing.key")


# -- the database file ---------------------------------------------------------------------------


def _fill(path: Path) -> None:
    store, _ = init_store(path)
    with store:
        store.add_user(
            User(
                nai="mn1@home.example",
                home_agent=IPv4Address("192.0.2.2"),
                mn_aaa_secret=Secret(MN_AAA),
                mn_ha_spi=256,
                mn_ha_key=Secret(MN_HA),
            )
        )
        store.add_user(
            User(
                nai="mn2@home.example",
                home_agent=IPv4Address("192.0.2.2"),
                mn_aaa_secret=Secret(b"other-mn-aaa-secret"),
                mn_ha_spi=257,
                mn_ha_key=Secret(b"other-mn-ha-key-16b"),
            )
        )
        store.add_client(Client("fa1", IPv4Network("192.0.2.1/32"), Secret(CLIENT), ClientRole.FA))
        store.add_gateway(
            Gateway(
                "gw1", IPv4Address("203.0.113.1"), GatewayMode.STATIC, (IPv4Network("10.1.0.0/16"),), Secret(GW_KEY)
            )
        )
        store.put_session(
            Session(
                session_id="s1",
                nai="mn1@home.example",
                session_root_key=Secret(SRK),
                epoch=1,
                home_address=IPv4Address("198.51.100.10"),
                home_agent=IPv4Address("192.0.2.2"),
                care_of_address=IPv4Address("192.0.2.1"),
                created=1.0,
                expires=2.0,
            )
        )


def _raw_bytes(path: Path) -> bytes:
    """The database file and any WAL/journal beside it."""
    return b"".join(
        p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name) and p.suffix != ".key"
    )


def test_no_plaintext_secret_in_database_files(tmp_path: Path) -> None:
    path = tmp_path / "vpn.db"
    _fill(path)
    raw = _raw_bytes(path)
    assert b"mn1@home.example" in raw  # the grep itself works
    for marker in (MN_AAA, MN_HA, CLIENT, GW_KEY, SRK):
        assert marker not in raw
        assert marker.hex().encode() not in raw


def test_no_plaintext_secret_while_open(tmp_path: Path) -> None:
    # With the store still open the data sits in the WAL file: check it too.
    path = tmp_path / "vpn.db"
    store, _ = init_store(path)
    with store:
        store.add_client(Client("fa1", IPv4Network("192.0.2.1/32"), Secret(CLIENT), ClientRole.FA))
        raw = _raw_bytes(path)
        assert b"fa1" in raw
        assert CLIENT not in raw


def test_wrong_key_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "vpn.db"
    _fill(path)
    other = tmp_path / "other.key"
    create_key_file(other)
    with pytest.raises(StoreError, match="key file does not match this database"):
        open_store(path, other)


def test_ciphertext_swapped_between_rows_fails(tmp_path: Path) -> None:
    path = tmp_path / "vpn.db"
    _fill(path)
    conn = sqlite3.connect(path)
    with conn:
        (blob,) = conn.execute("SELECT mn_ha_key FROM users WHERE nai = 'mn2@home.example'").fetchone()
        conn.execute("UPDATE users SET mn_ha_key = ? WHERE nai = 'mn1@home.example'", (blob,))
        # And one moved between columns of the same row.
        (aaa,) = conn.execute("SELECT mn_aaa_secret FROM users WHERE nai = 'mn2@home.example'").fetchone()
        conn.execute("UPDATE users SET mn_ha_key = ? WHERE nai = 'mn2@home.example'", (aaa,))
    conn.close()
    with open_store(path) as store:
        with pytest.raises(StoreError, match=r"users\.mn_ha_key of 'mn1@home.example'"):
            store.get_user("mn1@home.example")
        with pytest.raises(StoreError, match=r"users\.mn_ha_key of 'mn2@home.example'"):
            store.get_user("mn2@home.example")
        problems = store.check()
        assert any("mn_ha_key" in p for p in problems)
        # Other records are unaffected.
        assert store.get_client("fa1").secret == Secret(CLIENT)
