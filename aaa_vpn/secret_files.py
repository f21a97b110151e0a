"""Files that hold a secret: the one reader of every shared secret, key and
key file the project reads (the agents' and the servers' settings, the
command line, the store's key file, the labs).

Rules:

* A secret file must be a regular file that group and others cannot access
  at all (no mode bits in 077): the error names the file and the ``chmod``
  that fixes it. The check is made on the file that was opened (``fstat``),
  so a file swapped between the check and the read is not read. The same
  rule, by :func:`check_private`, covers a settings file that holds a secret
  inline.
* What a file holds is said by whoever names it, never guessed from its
  content (:class:`SecretForm`):

  - ``TEXT``: a shared secret or an MN-AAA secret, typed into equipment and
    into files with an editor or ``echo``: one trailing newline (``\\n`` or
    ``\\r\\n``) is not part of the secret, and is dropped.
  - ``RAW``: a key of random bytes (an MN-HA key, a gateway key), read
    exactly. A random key ends in 0x0a once in 256; dropping it would
    silently shorten the key.
  - ``HEX``: the same key written as hex digits (``xxd -p`` output, a
    secrets manager's text): ASCII whitespace, ``:`` separators and one
    leading ``0x`` are ignored; anything else is an error. Options and keys
    that read this form end in ``-hex-file`` / ``_hex_file``.

  A raw key may begin with any bytes, ``hex:`` or hex digits included, so a
  marker inside the file could not tell the forms apart; the name of the
  option can.
* Errors are :class:`SecretFileError`, a :class:`~aaa_vpn.model.ValidationError`
  (the operator's to fix); they never show a secret's bytes.
"""

from __future__ import annotations

import enum
import os
import stat
import string
from pathlib import Path

from aaa_vpn.model import ValidationError
from aaa_vpn.secret import Secret

#: Larger files are not secrets (a 4096-bit key in hex is 1 KiB).
MAX_SECRET_FILE = 64 * 1024

_HEX_IGNORED = frozenset(string.whitespace.encode("ascii")) | {ord(":")}


class SecretFileError(ValidationError):
    """A secret file is missing, unreadable, too widely accessible or malformed."""


class SecretFileMissing(SecretFileError):
    """The secret file does not exist."""


class SecretForm(enum.Enum):
    """What a secret file holds (module rules)."""

    TEXT = "text"
    """A shared secret or MN-AAA secret: one trailing newline dropped."""
    RAW = "raw"
    """A key: the file's bytes, exactly."""
    HEX = "hex"
    """A key as hex digits; whitespace, ``:`` and a leading ``0x`` ignored."""


def _check_mode(mode: int, path: Path, what: str) -> None:
    """The one permission rule of secret files (module rules)."""
    if not stat.S_ISREG(mode):
        raise SecretFileError(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise SecretFileError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); fix: chmod 600 {path}"
        )


def _os_error(path: Path, what: str, exc: OSError) -> SecretFileError:
    if isinstance(exc, FileNotFoundError):
        return SecretFileMissing(f"{what} {path} does not exist")
    return SecretFileError(f"{what} {path}: cannot read it: {exc.strerror}")


def check_private(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a regular file with no permissions for
    group or others (for a settings file that holds a secret inline)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise _os_error(path, what, exc) from None
    _check_mode(mode, path, what)


def read_private(path: Path, what: str) -> bytes:
    """The bytes of the secret file ``path``, checked as it is opened
    (module rules); ``what`` names it in errors (``--secret-file``)."""
    # O_NONBLOCK: a FIFO named as a secret file is refused below, not waited on.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(path, what, exc) from None
    data = b""
    try:
        _check_mode(os.fstat(fd).st_mode, path, what)
        while len(data) <= MAX_SECRET_FILE:
            chunk = os.read(fd, MAX_SECRET_FILE + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise _os_error(path, what, exc) from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE:
        raise SecretFileError(f"{what} {path} holds more than {MAX_SECRET_FILE} octets: it is not a secret file")
    return data


def parse_hex(text: bytes | str, what: str) -> bytes:
    """Hex digits as bytes: ASCII whitespace, ``:`` separators and one leading
    ``0x`` are ignored (``00:11:22``, ``0x0011``, ``xxd -p`` lines)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    digits = bytes(byte for byte in data if byte not in _HEX_IGNORED)
    if digits[:2].lower() == b"0x":
        digits = digits[2:]
    try:
        return bytes.fromhex(digits.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        # Never quote the text: it is a secret.
        raise SecretFileError(
            f"{what} is not hexadecimal (an even number of 0-9a-f digits; whitespace and ':' allowed)"
        ) from None


def decode_secret(data: bytes, form: SecretForm, what: str) -> bytes:
    """A secret file's (or stdin's) bytes as the secret they hold in ``form``."""
    if form is SecretForm.TEXT:
        # `echo secret > file` adds a newline the operator did not mean as part of the secret.
        if data.endswith(b"\r\n"):
            return data[:-2]
        return data.removesuffix(b"\n")
    if form is SecretForm.HEX:
        return parse_hex(data, what)
    return data


def read_secret_file(path: Path, what: str, form: SecretForm, minimum: int = 1) -> Secret:
    """The secret in the file ``path`` in ``form``, at least ``minimum`` octets
    long; ``what`` names the file in errors (``--gateway-key-file``)."""
    value = decode_secret(read_private(path, what), form, f"{what} {path}")
    if len(value) < minimum:
        raise SecretFileError(f"{what} {path} holds {len(value)} octets; at least {minimum} are required")
    return Secret(value)


__all__ = [
    "MAX_SECRET_FILE",
    "SecretFileError",
    "SecretFileMissing",
    "SecretForm",
    "check_private",
    "decode_secret",
    "parse_hex",
    "read_private",
    "read_secret_file",
]
