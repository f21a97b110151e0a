"""An agent's journal: what a restarted FA, HA or gateway needs to carry on
with the SAs its backend still holds (docs/agents.md, "Restart").

Rules:

1. The journal holds the role's long-lived state only
   (:meth:`~aaa_vpn.roles.agent.Agent.export_state`): visitors, forwarding
   paths, bindings, gateway bindings, each with its expiry and the view of the
   VPN profile it was installed from, and the replay state (the last
   Identification accepted per node, RFC 5944 section 5.7). In-flight
   exchanges are not in it: they start over (the node retransmits).
2. It holds keys, so it is sealed: AES-256-GCM under a key derived with
   HKDF-SHA256 from the node's own credential (its RADIUS shared secret with
   its first AAA server, or a gateway's provisioned key) and its address; the
   role, address and format version are the associated data. The file is
   written atomically (a temporary file of mode 0600, fsync, rename). A
   journal that does not open (another node's, a changed secret, a damaged
   file) is refused with :class:`JournalError` and never half-read.
3. Profiles inside it use the aaa-vpn RADIUS encoding
   (:mod:`aaa_vpn.wire.radius_profile`), so there is one codec for views.
4. After a restart (:func:`recover`) the role takes its state back (entries
   that ended meanwhile are dropped), then the backend is reconciled: the
   paths of owners the live state still uses are kept, every other path the
   backend holds is removed, and live state whose SAs are gone ends as if it
   had expired (an HA tells the gateways, lifetime 0).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aaa_vpn.model import Flavour
from aaa_vpn.roles.agent import Agent
from aaa_vpn.sa.base import SaBackend, SaError
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import PathProfile, VpnProfile
from aaa_vpn.wire.radius_profile import ProfileDecodeError, ProfileError, decode_profile, encode_profile

FORMAT = "aaa-vpn-agent-journal"
VERSION = 1
#: The profile encoding's own salt encryption is not what protects the keys
#: here (the AES-GCM envelope is): a fixed secret and authenticator.
_INNER_SECRET = b"aaa-vpn journal"
_INNER_AUTHENTICATOR = bytes(16)


class JournalError(Exception):
    """The journal cannot be read or written; the message says why (never a key)."""


def journal_key(credential: Secret, node: IPv4Address) -> bytes:
    """The AES-256-GCM key of ``node``'s journal (rule 2)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"aaa-vpn agent journal\x00" + node.packed
    ).derive(credential.value)


# -- values inside the sealed document ------------------------------------------------------------------


def _profile_to_json(profile: VpnProfile) -> str:
    attributes = encode_profile(profile, Flavour.AAA_VPN, _INNER_SECRET, _INNER_AUTHENTICATOR, budget=1 << 30)
    return base64.b64encode(b"".join(attributes)).decode("ascii")


def _profile_from_json(text: str) -> VpnProfile:
    return decode_profile(base64.b64decode(text, validate=True), _INNER_SECRET, _INNER_AUTHENTICATOR)


def _to_json(value: Any) -> Any:
    if isinstance(value, VpnProfile):
        return {"$profile": _profile_to_json(value)}
    if isinstance(value, Secret):
        return {"$secret": value.value.hex()}
    if isinstance(value, tuple) and value and all(isinstance(p, PathProfile) for p in value):
        # A gateway's paths: a profile shell around them (one codec for views).
        shell = VpnProfile("paths", value[0].local, value[0].peer, value[0].peer, 0, 1, paths=value)
        return {"$paths": _profile_to_json(shell)}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise JournalError(f"cannot journal a {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$profile"}:
            return _profile_from_json(value["$profile"])
        if set(value) == {"$secret"}:
            return Secret(bytes.fromhex(value["$secret"]))
        if set(value) == {"$paths"}:
            return _profile_from_json(value["$paths"]).paths
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


# -- the sealed document --------------------------------------------------------------------------------


def _aad(role: str, node: IPv4Address) -> bytes:
    return f"{FORMAT}|{VERSION}|{role}|{node}".encode()


def encode_journal(
    state: dict[str, Any], role: str, node: IPv4Address, credential: Secret, now: float, nonce: bytes | None = None
) -> bytes:
    """The sealed journal document for ``state`` (rule 2)."""
    try:
        plain = json.dumps(_to_json(state), separators=(",", ":"), sort_keys=True).encode()
    except (ProfileError, ValueError) as exc:
        raise JournalError(f"cannot encode the agent's state: {exc}") from None
    nonce = os.urandom(12) if nonce is None else nonce
    sealed = AESGCM(journal_key(credential, node)).encrypt(nonce, plain, _aad(role, node))
    document = {
        "format": FORMAT,
        "version": VERSION,
        "role": role,
        "node": str(node),
        "saved": now,
        "nonce": nonce.hex(),
        "sealed": base64.b64encode(sealed).decode("ascii"),
    }
    return (json.dumps(document, indent=1) + "\n").encode()


def decode_journal(data: bytes, role: str, node: IPv4Address, credential: Secret) -> dict[str, Any]:
    """Open a journal written by :func:`encode_journal` for this role and node."""
    try:
        document = json.loads(data)
    except ValueError:
        raise JournalError("not a JSON document") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise JournalError(f"not an aaa-vpn agent journal (format {FORMAT!r} expected)")
    if document.get("version") != VERSION:
        raise JournalError(f"unsupported journal version {document.get('version')!r}, this aaa_vpn reads {VERSION}")
    if document.get("role") != role or document.get("node") != str(node):
        raise JournalError(
            f"the journal is of the {document.get('role')} at {document.get('node')}, not of this {role} at {node}"
        )
    try:
        nonce = bytes.fromhex(document["nonce"])
        sealed = base64.b64decode(document["sealed"], validate=True)
        plain = AESGCM(journal_key(credential, node)).decrypt(nonce, sealed, _aad(role, node))
    except (KeyError, TypeError, ValueError):
        raise JournalError("the journal is damaged (nonce or sealed data malformed)") from None
    except InvalidTag:
        raise JournalError("the journal does not open with this node's secret (changed secret, or damaged)") from None
    try:
        state = _from_json(json.loads(plain))
    except (ValueError, ProfileDecodeError) as exc:
        raise JournalError(f"the journal's content is invalid: {exc}") from None
    if not isinstance(state, dict):
        raise JournalError("the journal's content is not a state document")
    return state


def write_journal(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600 (rule 2)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise JournalError(f"cannot write the journal in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise JournalError(f"cannot write the journal {path}: {exc.strerror}") from None


# -- recovery -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """What a restart found and did (logged, and in the state file)."""

    restored: int  # owners the journal's live state uses
    kept: int  # paths the backend held for them
    removed: int  # paths the backend held for nobody
    ended: int  # owners of live state whose SAs were gone
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "restored": self.restored,
            "kept": self.kept,
            "removed": self.removed,
            "ended": self.ended,
            "errors": list(self.errors),
        }


def recover(agent: Agent, backend: SaBackend, state: dict[str, Any] | None, now: float) -> Recovery:
    """Rule 4: take the journal's state back and reconcile the backend with it.

    The agent's events (an HA's lifetime-0 Binding Updates, DeletePaths for
    state that ended) are left in its queue for the caller to carry out."""
    if state is not None:
        agent.restore_state(state, now)
    live = agent.owners()
    installed = backend.paths()
    kept = sum(1 for p in installed if p.owner in live)
    errors: list[str] = []
    removed = 0
    for owner in dict.fromkeys(p.owner for p in installed if p.owner not in live):
        try:
            removed += backend.delete(owner)
        except SaError as exc:
            errors.append(f"{owner}: {exc}")
    present = {p.owner for p in installed}
    agent.forget_unbacked(present, now)
    ended = len(live - agent.owners())
    return Recovery(len(live), kept, removed, ended, tuple(errors))
