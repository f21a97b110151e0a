"""Secrets at rest: AES-256-GCM under a server key file (docs/design.md section 3).

Every secret column of the VPN database (MN-AAA secret, MN-HA key, RADIUS client
secret, gateway key, session root key) is stored sealed by :class:`SecretBox`.

Rules:

- The key file holds 32 random bytes (raw, or as 64 hex digits for operators who
  keep it in a secrets manager). :func:`create_key_file` writes it with mode 0600
  and never overwrites an existing file.
- A key file that group or others can read, write or execute is **refused** (not
  merely warned about): a database copy is harmless without the key file, so the
  key file is the one thing that must stay private, and a silent warning in a
  daemon log is too easy to miss.
- Each value is sealed with AES-256-GCM, random 12-byte nonce, and associated
  data naming table, column and row key, so a ciphertext copied to another row or
  column fails to open instead of silently handing out another user's key.
- Random 96-bit GCM nonces are safe for about 2**32 messages per key (NIST
  SP 800-38D section 8.3). Session root keys are re-sealed on every
  registration, so a busy home AAA would reach that bound in weeks. Each blob
  therefore also carries a random 16-byte salt that selects a per-blob AES key
  (HMAC-SHA256 of the salt under the file key), which lifts the bound far beyond
  the life of any key file for the price of one HMAC per seal/open.
- The database stores a key check value (HMAC of a constant under the key file)
  so that a wrong key file gives "key file does not match this database", not
  a decryption error on the first secret read.

Blob layout: ``version (1) || salt (16) || nonce (12) || ciphertext || tag (16)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aaa_vpn.secret_files import SecretFileError, SecretFileMissing, read_private
from aaa_vpn.store.base import StoreError

KEY_SIZE = 32
SALT_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
_VERSION = b"\x01"
_OVERHEAD = len(_VERSION) + SALT_SIZE + NONCE_SIZE + TAG_SIZE

# Domain separation: the raw file key is never used directly as a cipher key.
_ENCRYPTION_LABEL = b"aaa_vpn store secret encryption v1"
_CHECK_LABEL = b"aaa_vpn store key check v1"


class KeyFileError(StoreError):
    """The key file is missing, unreadable, malformed or too widely readable."""


def create_key_file(path: Path) -> None:
    """Write 32 fresh random bytes to ``path`` with mode 0600.

    Raises :class:`KeyFileError` if the file exists: overwriting a key file would
    make every database encrypted under it unreadable.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} exists already; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from None
    try:
        # The umask can only narrow 0600, but be explicit in case the file
        # system ignored the mode argument.
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(KEY_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path) -> bytes:
    """Return the 32-byte key in ``path``, refusing files others can access
    (read by :func:`aaa_vpn.secret_files.read_private`, like every secret file)."""
    try:
        data = read_private(path, "key file")
    except SecretFileMissing:
        raise KeyFileError(
            f"key file {path} does not exist (create one with 'aaa-vpn db init', or name it"
            " with --key-file / AAA_VPN_KEY_FILE)"
        ) from None
    except SecretFileError as exc:
        raise KeyFileError(str(exc)) from None
    # Told apart by length, never by content: a raw key is exactly 32 octets,
    # its hex form at least 64.
    if len(data) == KEY_SIZE:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyFileError(f"key file {path} is not a key: expected {KEY_SIZE} bytes (or {2 * KEY_SIZE} hex digits)")


def secret_context(table: str, column: str, row_key: str) -> bytes:
    """Associated data binding a sealed value to one cell of the database."""
    # NUL separators: names and keys never contain NUL, so contexts cannot collide.
    return f"{table}\x00{column}\x00{row_key}".encode()


#: Blobs sealed under one salt (one derived AES key) before a fresh salt is
#: drawn. Random 96-bit nonces stay collision-safe far beyond this (NIST SP
#: 800-38D section 8.3 allows 2**32 per key); drawing a salt per blob instead
#: cost a key derivation and a cipher setup on every session write.
_BLOBS_PER_SALT = 1 << 20


class SecretBox:
    """Seals and opens secret column values under the server key."""

    __slots__ = ("_check", "_encryption_key", "_sealed", "_sealer")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise KeyFileError(f"the server key must be {KEY_SIZE} bytes, not {len(key)}")
        self._encryption_key = hmac.new(key, _ENCRYPTION_LABEL, hashlib.sha256).digest()
        self._check = hmac.new(key, _CHECK_LABEL, hashlib.sha256).digest()
        self._sealer: tuple[bytes, AESGCM] | None = None
        self._sealed = 0

    @classmethod
    def from_key_file(cls, path: Path) -> SecretBox:
        return cls(read_key_file(path))

    def __repr__(self) -> str:
        return "SecretBox(<key redacted>)"

    @property
    def key_check(self) -> bytes:
        """A value stored in the database to recognise the right key file."""
        return self._check

    def matches(self, key_check: bytes) -> bool:
        return hmac.compare_digest(self._check, key_check)

    def _cipher(self, salt: bytes) -> AESGCM:
        return AESGCM(hmac.new(self._encryption_key, salt, hashlib.sha256).digest())

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        if self._sealer is None or self._sealed >= _BLOBS_PER_SALT:
            salt = os.urandom(SALT_SIZE)
            self._sealer = (salt, self._cipher(salt))
            self._sealed = 0
        self._sealed += 1
        salt, cipher = self._sealer
        nonce = os.urandom(NONCE_SIZE)
        sealed = cipher.encrypt(nonce, plaintext, _VERSION + context)
        return _VERSION + salt + nonce + sealed

    def open(self, blob: bytes, context: bytes) -> bytes:
        """Return the plaintext; raise :class:`StoreError` if ``blob`` was altered,
        moved from another cell, or sealed under another key."""
        if len(blob) < _OVERHEAD or blob[:1] != _VERSION:
            raise StoreError(f"secret {_describe(context)} is malformed in the database")
        salt = blob[1 : 1 + SALT_SIZE]
        nonce = blob[1 + SALT_SIZE : 1 + SALT_SIZE + NONCE_SIZE]
        try:
            return self._cipher(salt).decrypt(nonce, blob[1 + SALT_SIZE + NONCE_SIZE :], _VERSION + context)
        except InvalidTag:
            raise StoreError(
                f"secret {_describe(context)} cannot be decrypted: it was altered, copied from"
                " another record, or sealed under another key file"
            ) from None


def _describe(context: bytes) -> str:
    table, _, rest = context.decode(errors="replace").partition("\x00")
    column, _, row_key = rest.partition("\x00")
    return f"{table}.{column} of {row_key!r}"


__all__ = [
    "KEY_SIZE",
    "KeyFileError",
    "SecretBox",
    "create_key_file",
    "read_key_file",
    "secret_context",
]
