"""Who may use the provisioning API and the user page, and how they prove it.

Rules:

1. Operators present a bearer token (``Authorization: Bearer <token>``).
   The server knows only SHA-256 digests of tokens, from a tokens file of
   mode 0600 (:func:`load_tokens`), one line per token::

       NAME ROLE[,ROLE...] sha256:HEX

   A token is 32 random octets (:func:`new_token`), so a plain digest is as
   hard to reverse as the token is to guess; no slow hash is needed. Tokens
   are never logged: log lines name the token's NAME.
2. Roles (:class:`Role`): ``read-only`` reads everything the API shows
   (never a secret); ``provisioning`` also adds, changes and deletes records,
   sets users' web credentials and what they may choose; ``sessions`` also
   pushes, disconnects and deletes sessions. A token has one or more roles.
3. A user signs in to their own page with a *web credential*: a password the
   operator sets (``aaa-vpn api password``, or the API), kept only as a
   scrypt verifier (RFC 7914; N=2^14, r=8, p=1, 16 octets of salt, 32 of
   output) -- never the MN-AAA secret, which is a device key and must not
   become something typed into a browser. Passwords are 10..1024 characters.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from aaa_vpn.model import ValidationError
from aaa_vpn.secret_files import read_private


class Role(enum.Enum):
    """What a token may do (rule 2)."""

    READ_ONLY = "read-only"
    PROVISIONING = "provisioning"
    SESSIONS = "sessions"


@dataclass(frozen=True)
class Operator:
    """Who a token belongs to: its name (for logs and the audit log) and roles."""

    name: str
    roles: frozenset[Role]

    def may(self, role: Role) -> bool:
        return role is Role.READ_ONLY or role in self.roles


TOKEN_PREFIX = "aaavpn_"


def new_token() -> str:
    """A new operator token (rule 1)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_line(name: str, roles: frozenset[Role], token: str) -> str:
    """The tokens-file line for ``token`` (rule 1)."""
    check_operator_name(name)
    if not roles:
        raise ValidationError("a token has at least one role")
    ordered = ",".join(role.value for role in Role if role in roles)
    return f"{name} {ordered} {token_digest(token)}"


def check_operator_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
        raise ValidationError(f"invalid token name {name!r}: 1-64 of letters, digits, '-', '_', '.', '@'")
    return name


def parse_roles(text: str) -> frozenset[Role]:
    roles = set()
    for item in text.split(","):
        try:
            roles.add(Role(item.strip()))
        except ValueError:
            allowed = ", ".join(role.value for role in Role)
            raise ValidationError(f"invalid role {item.strip()!r}: one of {allowed}") from None
    return frozenset(roles)


class TokenTable:
    """Operators by the digest of their token (rule 1)."""

    def __init__(self, entries: dict[str, Operator]) -> None:
        self._by_digest = entries

    def __len__(self) -> int:
        return len(self._by_digest)

    def __repr__(self) -> str:
        return f"TokenTable({len(self._by_digest)} tokens)"

    def operator(self, token: str) -> Operator | None:
        """The operator ``token`` belongs to, or None."""
        digest = token_digest(token)
        for known, operator in self._by_digest.items():  # every entry compared: no early exit on a match
            if hmac.compare_digest(known, digest):
                return operator
        return None


def parse_tokens(text: str, source: str) -> TokenTable:
    """A tokens file's content (rule 1); ValidationError naming the line."""
    entries: dict[str, Operator] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source} line {number}"
        if len(parts) != 3 or not parts[2].startswith("sha256:") or len(parts[2]) != 71:
            raise ValidationError(f"{where}: expected 'NAME ROLE[,ROLE] sha256:<64 hex digits>'")
        name, roles, digest = parts
        try:
            bytes.fromhex(digest[7:])
            check_operator_name(name)
            parsed = parse_roles(roles)
        except ValueError as exc:
            raise ValidationError(f"{where}: {exc}") from None
        if name in names or digest in entries:
            raise ValidationError(f"{where}: token {name!r} is listed twice")
        names.add(name)
        entries[digest.lower()] = Operator(name, parsed)
    return TokenTable(entries)


def load_tokens(path: Path) -> TokenTable:
    """The tokens file at ``path`` (mode 0600, as every secret file)."""
    data = read_private(path, "--tokens-file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"--tokens-file {path}: not UTF-8 text") from None
    return parse_tokens(text, f"--tokens-file {path}")


# -- web credentials (rule 3) ----------------------------------------------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
MIN_PASSWORD, MAX_PASSWORD = 10, 1024


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(f"a web password is {MIN_PASSWORD}..{MAX_PASSWORD} characters")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def hash_password(password: str) -> str:
    """The verifier stored for ``password``: ``scrypt$N$r$p$salt$hash``."""
    check_password(password)
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(verifier: str | None, password: str) -> bool:
    """Whether ``password`` matches ``verifier``. Without a verifier (no
    credential set) the same work is done, so timing does not tell users apart."""
    if verifier is None or len(password) > MAX_PASSWORD:
        _scrypt("x" * MIN_PASSWORD, b"\0" * 16, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        return False
    try:
        scheme, n, r, p, salt, digest = verifier.split("$")
        cost = (int(n), int(r), int(p))
        if scheme != "scrypt" or not (2 <= cost[0] <= 1 << 20 and 1 <= cost[1] <= 32 and 1 <= cost[2] <= 16):
            return False
        expected = _unb64(digest)
        got = _scrypt(password, _unb64(salt), *cost)
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "Operator",
    "Role",
    "TokenTable",
    "check_password",
    "hash_password",
    "load_tokens",
    "new_token",
    "parse_roles",
    "parse_tokens",
    "token_digest",
    "token_line",
    "verify_password",
]
