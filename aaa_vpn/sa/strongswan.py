"""The ``strongswan`` SA backend: a node's paths as IKEv2 connections of its own
strongSwan daemon (charon), driven over VICI with the ``vici`` package.

One path (``PathProfile`` with ``key_mode`` IKEV2) becomes, in this node's charon:

* a shared IKE key (``load-shared``): ``path.ike_psk``, owned by the two ends'
  identities;
* a connection (``load-conn``): IKEv2 (RFC 7296) between ``local`` and ``peer``
  with ``path.ike_proposal``, PSK authentication, and one CHILD_SA in tunnel
  mode (RFC 4301 section 4.4.1) with ``local_ts``/``remote_ts`` as traffic
  selectors and the path's ESP transform as its only proposal.

Rules:

* **Names and identities.** The connection (and its shared key) is named
  ``aaa_vpn:<owner, percent-encoded>:<peer>:<spi_in as 8 hex digits>``
  (:func:`connection_name`), so a restarted agent finds every path with its
  owner and peer in ``list-conns`` again. The IKE identities are per path:
  ``<spi>@<address>`` with the SPI the end receives on
  (:func:`ike_identity`): the local end is ``spi_in@local``, the peer
  ``spi_out@peer``. Both ends compute the same pair from their mirrored views.
  Identities by address alone would not do: two sessions between the same FA
  and HA would offer charon two connections and two keys for one pair of
  identities, and it would pick the wrong one for one of them. The profile's
  SPIs are thus the path's name here (connection, identities, the
  :class:`SaConflict` check); the ESP SPIs on the wire are the ones charon
  allocates in the exchange, and ``key_in``/``key_out`` are not used.
* **Who initiates.** ``initiator(path)`` says whether this end starts the IKE
  exchange; the rule is "the end that installs second in the flow", whose
  peer is then ready for it. :func:`initiator_for` gives it per agent
  (HA: FA-HA; gateway: HA-GW and FA-GW; FA: the previous FA's end of FA-FA);
  :func:`default_initiator` guesses it from the path alone (see there). The
  initiating :meth:`StrongSwanBackend.install` returns only when the VICI
  ``initiate`` command reports the CHILD_SA established (installed), or fails;
  the responding one returns once the key and the connection are loaded.
  :meth:`~StrongSwanBackend.begin_install` and
  :meth:`~StrongSwanBackend.finish_install` are the same in two steps, the
  exchange running in a background thread in between (the HA tells its
  gateways meanwhile; ``aaa_vpn.service.agents``).
* **All or nothing** (``aaa_vpn.sa.base``): on any failure (peer unreachable
  within ``timeout``, proposal mismatch, authentication failure, daemon gone)
  the IKE_SA is terminated and the connection and key unloaded before the
  :class:`StrongSwanError` subclass is raised; nothing of the path is left in
  this node's charon.
* **Lifetimes** (:func:`lifetimes`): no SA outlives ``path.lifetime``. The
  CHILD_SA's hard lifetime is ``lifetime``; the initiating end rekeys it (and
  its IKE_SA) a margin before, each new SA again bounded by ``lifetime``, so
  a path that the agents keep (renewals install the identical path: a no-op)
  keeps working. The responding end never rekeys (no rekey collisions); its
  CHILD_SAs hard-expire at ``lifetime`` if the initiator does not rekey. The
  agents' timers call :meth:`~StrongSwanBackend.delete` for the path itself.
* **delete(owner, peer)** terminates the matching connections' IKE_SAs (the
  peer gets the DELETE and removes its side; this end drops them at once,
  without waiting for the answer, so a peer that is gone costs nothing) and
  unloads connection and key. Other owners' and other peers' connections are
  not touched.
* **Restart.** charon keeps the connections and SAs when the agent process
  goes (``close`` leaves them). What charon cannot give back is kept in a
  side table (a JSON file beside the VICI socket by default): per connection
  the owner, the installation order, who initiated and the path's non-secret
  fields, plus a SHA-256 fingerprint of its secret fields to recognise the
  identical path again. It never holds a key or the PSK. A new backend object
  lists what is loaded in charon and described in the table; its paths have
  empty :class:`~aaa_vpn.secret.Secret` placeholders for ``key_in``,
  ``key_out``, ``ike_psk`` (and ``binding_key``) until they are installed
  again.
* **Not supported**: MANUAL paths (strongSwan keys its SAs with IKE; it has
  no way to install AAA-issued ESP keys) raise :class:`SaUnsupported`; QoS
  (DSCP marking, rate limits) is not applied by this backend.

The VICI replies are plain dicts of bytes; :class:`Vici` is the small typed
layer over the untyped package, and the only place that touches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import vici
import vici.exception

from aaa_vpn.model import KeyMode
from aaa_vpn.sa.base import (
    InstalledPath,
    SaConflict,
    SaError,
    SaUnsupported,
    path_from_public_fields,
    public_fields,
    validate_path,
)
from aaa_vpn.sa.charon import FWMARK
from aaa_vpn.sa.memory import Direction, SaCounters
from aaa_vpn.sa.routing import PolicyRouting
from aaa_vpn.sa.tun import IpCommand, NetnsError
from aaa_vpn.wire.profile import PathProfile, PathRole

log = logging.getLogger("aaa_vpn.sa.strongswan")

#: Every connection this backend loads is named ``aaa_vpn:...``; others in the same charon are ignored.
NAME_PREFIX = "aaa_vpn"
#: The CHILD_SA of each connection.
CHILD_NAME = "esp"
#: VICI section names are at most 255 octets.
MAX_NAME = 255
#: Side table format version.
TABLE_VERSION = 1
#: charon's connections are listed again at least this often (seconds; StrongSwanBackend._sync).
RELIST_SECONDS = 1.0

ANY = IPv4Network("0.0.0.0/0")


# -- errors ----------------------------------------------------------------------


#: The IPsec policy priority of forwarding (FA-FA) paths: after every
#: automatic one (charon's are below 200000; lower is preferred).
FORWARDING_POLICY_PRIORITY = 300000


class StrongSwanError(SaError):
    """The strongswan backend could not install or remove a path; nothing was left installed."""


class CharonUnavailable(StrongSwanError):
    """This node's charon cannot be reached: the daemon is down or its VICI socket missing."""


class NegotiationFailed(StrongSwanError):
    """The IKE exchange with the peer did not produce the CHILD_SA."""


class PeerUnreachable(NegotiationFailed):
    """The peer did not answer the IKE exchange within the backend's timeout."""


class ProposalMismatch(NegotiationFailed):
    """The peer accepted none of the IKE proposals or ESP transforms (NO_PROPOSAL_CHOSEN)."""


class AuthenticationFailed(NegotiationFailed):
    """The PSK authentication failed (AUTHENTICATION_FAILED): the keys differ, or the
    peer has no connection for this path's identities (it has not installed its end)."""


# -- names, identities, initiator rules, lifetimes --------------------------------


def connection_name(owner: str, peer: IPv4Address, spi_in: int) -> str:
    """The charon connection (and shared key id) of ``owner``'s path toward ``peer``
    that receives on ``spi_in``: ``aaa_vpn:<owner>:<peer>:<spi_in>``."""
    if not owner:
        raise SaError("a path's owner must not be empty")
    name = f"{NAME_PREFIX}:{quote(owner, safe='')}:{peer}:{spi_in:08x}"
    if len(name.encode()) > MAX_NAME:
        raise SaError(f"owner too long for a charon connection name ({len(name.encode())} > {MAX_NAME} octets)")
    return name


@dataclass(frozen=True)
class ConnectionName:
    """A parsed :func:`connection_name`."""

    owner: str
    peer: IPv4Address
    spi_in: int


_NAME_RE = re.compile(rf"^{NAME_PREFIX}:([^:]+):([0-9.]+):([0-9a-f]{{8}})$")


def parse_connection_name(name: str) -> ConnectionName | None:
    """The owner, peer and inbound SPI in ``name``, or ``None`` if it is not one of ours."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    try:
        peer = IPv4Address(match.group(2))
    except ValueError:
        return None
    return ConnectionName(unquote(match.group(1)), peer, int(match.group(3), 16))


def ike_identity(address: IPv4Address, spi: int) -> str:
    """An end's IKE identity for one path: ``<spi it receives on>@<address>`` (an RFC822-type ID)."""
    return f"{spi:08x}@{address}"


def _single_host(selectors: tuple[IPv4Network, ...]) -> bool:
    return len(selectors) == 1 and selectors[0].prefixlen == 32


def default_initiator(path: PathProfile) -> bool:
    """Whether this end initiates, guessed from the path alone.

    Every path the home AAA plans (``roles.home_aaa.plan_paths`` and the
    forwarding path) has the mobile node's home address as the one selector
    of the end nearer the node: the FA of FA-HA and FA-GW, the HA of HA-GW,
    the new FA of FA-FA. That end installs first in every flow, so the other
    end, whose *remote* selector is that single host, initiates. When both or
    neither side is a single host (a gateway path to a one-host
    correspondent), the end with the higher address initiates, so exactly one
    does; an agent should then pass :func:`initiator_for` instead."""
    near, far = _single_host(path.local_ts), _single_host(path.remote_ts)
    if near != far:
        return far
    return int(path.local) > int(path.peer)


AgentKind = Literal["fa", "ha", "gw"]


def initiator_for(kind: AgentKind) -> Callable[[PathProfile], bool]:
    """The rule of docs/design.md's flows for the agent running on this node: the end
    that installs second initiates.

    * HA: FA-HA paths (the FA installed before relaying the registration);
      not HA-GW (the gateway installs after the HA, from its Binding Update).
    * gateway: HA-GW and FA-GW paths (it installs from the HA's Binding Update,
      after the HA and the FA).
    * FA: only the previous FA's end of an FA-FA forwarding path (the new FA
      installed its end at registration; the previous FA's view is the one
      whose remote selector is the node's home address); never FA-HA or FA-GW.
    """
    if kind == "ha":
        return lambda path: path.role is PathRole.FA_HA
    if kind == "gw":
        return lambda path: path.role in (PathRole.HA_GW, PathRole.FA_GW)
    if kind == "fa":
        return lambda path: path.role is PathRole.FA_FA and default_initiator(path)
    raise ValueError(f"unknown agent kind {kind!r}: fa, ha or gw")


@dataclass(frozen=True)
class Lifetimes:
    """charon's timers for one path, in seconds (0 = never)."""

    child_life: int  # CHILD_SA hard lifetime: deleted then
    child_rekey: int  # CHILD_SA soft lifetime: rekeyed then (minus up to rand)
    ike_rekey: int  # IKE_SA rekeyed then (minus up to rand)
    ike_over: int  # IKE_SA deleted this long after its (jittered) rekey time if that failed
    rand: int  # jitter subtracted from rekey times


def lifetimes(lifetime: int, initiator: bool) -> Lifetimes:
    """The timers that keep every SA within ``lifetime`` seconds.

    The margin between rekeying and the hard end is a tenth of the lifetime,
    at least one second; rekeys are spread over half of it. The IKE_SA ends
    at ``rekey - jitter + over <= lifetime``. The responder never rekeys."""
    margin = max(1, lifetime // 10)
    rekey = max(0, lifetime - margin)
    if not initiator or rekey == 0:
        return Lifetimes(child_life=lifetime, child_rekey=0, ike_rekey=0, ike_over=0, rand=0)
    return Lifetimes(child_life=lifetime, child_rekey=rekey, ike_rekey=rekey, ike_over=margin, rand=margin // 2)


# -- the typed VICI layer ----------------------------------------------------------


class _CommandFailed(Exception):
    """A VICI command answered ``success = no``."""

    def __init__(self, errmsg: str, logs: list[str]) -> None:
        super().__init__(errmsg)
        self.errmsg = errmsg
        self.logs = logs


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return ""


def _texts(value: object) -> tuple[str, ...]:
    return tuple(_text(v) for v in value) if isinstance(value, list) else ()


def _section(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class ChildSaState:
    """One CHILD_SA as ``list-sas`` shows it (SPIs as integers)."""

    name: str
    state: str  # INSTALLED, REKEYED, DELETED, ...
    spi_in: int
    spi_out: int
    encryption: str
    encap: bool  # ESP in UDP (always, with kernel-libipsec in 5.9.8)
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    life_time: int  # seconds left before the hard expiry
    bytes_in: int = 0  # inner octets and packets through it, as charon counts them
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0


@dataclass(frozen=True)
class IkeSaState:
    """One IKE_SA as ``list-sas`` shows it."""

    name: str  # the connection's name
    unique_id: int
    state: str  # CONNECTING, ESTABLISHED, ...
    initiator: bool
    local_id: str
    remote_id: str
    remote_host: str
    children: tuple[ChildSaState, ...] = field(default_factory=tuple)

    @property
    def installed(self) -> tuple[ChildSaState, ...]:
        return tuple(c for c in self.children if c.state == "INSTALLED")


def _hex(value: object) -> int:
    try:
        return int(_text(value), 16)
    except ValueError:
        return 0


def _int(value: object) -> int:
    try:
        return int(_text(value))
    except ValueError:
        return 0


def _ike_sa(name: str, sa: Mapping[str, object]) -> IkeSaState:
    children = tuple(
        ChildSaState(
            name=_text(child.get("name")),
            state=_text(child.get("state")),
            spi_in=_hex(child.get("spi-in")),
            spi_out=_hex(child.get("spi-out")),
            encryption=_text(child.get("encr-alg")),
            encap=_text(child.get("encap")) == "yes",
            local_ts=_texts(child.get("local-ts")),
            remote_ts=_texts(child.get("remote-ts")),
            life_time=_int(child.get("life-time")),
            bytes_in=_int(child.get("bytes-in")),
            packets_in=_int(child.get("packets-in")),
            bytes_out=_int(child.get("bytes-out")),
            packets_out=_int(child.get("packets-out")),
        )
        for child in map(_section, _section(sa.get("child-sas")).values())
    )
    return IkeSaState(
        name=name,
        unique_id=_int(sa.get("uniqueid")),
        state=_text(sa.get("state")),
        initiator=_text(sa.get("initiator")) == "yes",
        local_id=_text(sa.get("local-id")),
        remote_id=_text(sa.get("remote-id")),
        remote_host=_text(sa.get("remote-host")),
        children=children,
    )


class Vici:
    """A typed VICI session with one charon. Every failure to talk to the daemon
    raises :class:`CharonUnavailable`; a command that charon refuses raises
    ``_CommandFailed`` (internal) with charon's message and the streamed logs."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float) -> None:
        self.socket_path = str(socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bounds every wait for a reply; initiate gets its own, shorter, charon-side timeout.
        sock.settimeout(timeout + 5.0)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise CharonUnavailable(f"cannot reach charon at {self.socket_path}: {exc.strerror or exc}") from None
        self._sock = sock
        self._session: Any = vici.Session(sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def usable(self) -> bool:
        """Whether the connection can carry another command: an idle VICI
        connection has nothing to read, so anything readable is the end of it
        (charon went away or restarted) or a stray message."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def __enter__(self) -> Vici:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except vici.exception.CommandException as exc:
            raise _CommandFailed(str(exc).removeprefix("Command failed: "), []) from None
        except (OSError, vici.exception.SessionException, vici.exception.DeserializationException) as exc:
            raise CharonUnavailable(f"lost charon at {self.socket_path} during {what}: {exc}") from None

    def _streamed(self, what: str, command: str, message: Mapping[str, object]) -> list[str]:
        """Run a command that streams ``control-log`` events; return the log lines."""
        logs: list[str] = []

        def run() -> None:
            for event in self._session.streamed_request(command, "control-log", dict(message)):
                logs.append(_text(_section(event).get("msg")))

        try:
            self._call(what, run)
        except _CommandFailed as exc:
            raise _CommandFailed(exc.errmsg, logs) from None
        return logs

    def version(self) -> str:
        reply = _section(self._call("version", self._session.version))
        return f"{_text(reply.get('daemon'))} {_text(reply.get('version'))}"

    def connection_names(self) -> list[str]:
        names: list[str] = []
        for conns in self._call("list-conns", lambda: list(self._session.list_conns())):
            names.extend(_section(conns).keys())
        return names

    def ike_sas(self, name: str | None = None) -> list[IkeSaState]:
        filters = {"ike": name} if name is not None else None
        result: list[IkeSaState] = []
        for sas in self._call("list-sas", lambda: list(self._session.list_sas(filters))):
            for ike_name, sa in _section(sas).items():
                result.append(_ike_sa(ike_name, _section(sa)))
        return result

    def shared_key_ids(self) -> list[str]:
        """The ids of the shared keys loaded over VICI (never their values)."""
        return list(_texts(_section(self._call("get-shared", self._session.get_shared)).get("keys")))

    def load_shared(self, key_id: str, data: bytes, owners: list[str]) -> None:
        message = {"id": key_id, "type": "IKE", "data": data, "owners": owners}
        self._call("load-shared", lambda: self._session.load_shared(message))

    def unload_shared(self, key_id: str) -> None:
        self._call("unload-shared", lambda: self._session.unload_shared({"id": key_id}))

    def load_conn(self, config: Mapping[str, object]) -> None:
        self._call("load-conn", lambda: self._session.load_conn(dict(config)))

    def unload_conn(self, name: str) -> None:
        self._call("unload-conn", lambda: self._session.unload_conn({"name": name}))

    def initiate(self, ike: str, child: str, timeout: float) -> list[str]:
        """Start ``child`` of ``ike``; return when it is established (or raise, charon's
        message and logs attached). charon gives up waiting after ``timeout`` seconds."""
        message = {"ike": ike, "child": child, "timeout": str(max(1, round(timeout * 1000)))}
        return self._streamed("initiate", "initiate", message)

    def terminate(self, ike: str) -> list[str]:
        """Delete every IKE_SA of connection ``ike`` (and their CHILD_SAs): charon sends
        the peer its DELETE and drops them at once, without waiting for the answer
        (``force`` and no timeout). Waiting would hold the agent for the whole
        timeout when the peer is gone (an FA that failed, a link that is down),
        and a handoff away from it would wait that long at the gateway and the HA."""
        return self._streamed("terminate", "terminate", {"ike": ike, "force": "yes"})


# -- the side table -----------------------------------------------------------------


def fingerprint(path: PathProfile) -> str:
    """A SHA-256 over the path's secret fields (domain-separated, length-prefixed):
    tells an identical re-installation from a different one after a restart,
    and reveals nothing of the (high-entropy, derived) keys themselves."""
    digest = hashlib.sha256(b"aaa_vpn strongswan path fingerprint v1\x00")
    for secret in (path.ike_psk, path.key_in, path.key_out, path.binding_key):
        if secret is None:
            digest.update(b"\x00")
        else:
            digest.update(b"\x01" + len(secret).to_bytes(4, "big") + secret.value)
    return digest.hexdigest()


@dataclass
class _Record:
    """One installed path as the side table keeps it (no secrets)."""

    name: str
    owner: str
    seq: int
    initiator: bool
    fingerprint: str
    fields: dict[str, Any]

    def same_path(self, fields: Mapping[str, Any], print_: str) -> bool:
        return self.fields == fields and self.fingerprint == print_

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "seq": self.seq,
            "initiator": self.initiator,
            "fingerprint": self.fingerprint,
            "path": self.fields,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Record:
        record = cls(
            name=str(data["name"]),
            owner=str(data["owner"]),
            seq=int(data["seq"]),
            initiator=bool(data["initiator"]),
            fingerprint=str(data["fingerprint"]),
            fields=dict(data["path"]),
        )
        path_from_public_fields(record.fields)  # must rebuild, or the table is corrupt
        return record


class SideTableCorrupt(StrongSwanError):
    """The side table cannot be read back (not what :meth:`_SideTable.save` writes)."""


class _SideTable:
    """The JSON file that survives the agent: ``{"version": 1, "paths": [record, ...]}``.

    It describes what lives in charon's memory, so it has to outlive the agent
    process, not the machine: it is written atomically (a temporary file
    renamed over it), without ``fsync``, which would put a disk flush into
    every install and delete (milliseconds, on a busy disk tens of them, while
    a handoff waits). After a power loss charon starts empty, and a table that
    did not reach the disk is dropped (:meth:`StrongSwanBackend._sync`). A load
    parses the file only when its content changed since the last load or save
    (another backend object of the node may write it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._text: bytes | None = None
        self._cached: dict[str, _Record] = {}
        #: The last load found content this object had not read or written itself.
        self.changed = False

    def load(self) -> dict[str, _Record]:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            self.changed = self._text is not None
            self._text, self._cached = None, {}
            return {}
        except OSError as exc:
            raise StrongSwanError(f"cannot read the side table {self.path}: {exc.strerror}") from None
        self.changed = text != self._text
        if not self.changed:
            return dict(self._cached)
        try:
            data = json.loads(text)
            if data.get("version") != TABLE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {TABLE_VERSION}")
            records = [_Record.from_json(item) for item in data["paths"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SideTableCorrupt(f"the side table {self.path} is corrupt ({exc}); remove it to start over") from None
        self._text, self._cached = text, {record.name: record for record in records}
        return dict(self._cached)

    def save(self, records: Mapping[str, _Record]) -> None:
        data = {"version": TABLE_VERSION, "paths": [r.to_json() for r in sorted(records.values(), key=_seq)]}
        text = json.dumps(data, indent=1).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StrongSwanError(f"cannot write the side table {self.path}: {exc.strerror}") from None
        self._text, self._cached = text, dict(records)


def _seq(record: _Record) -> int:
    return record.seq


# -- the backend ----------------------------------------------------------------------


class PendingInstall:
    """A path whose IKE exchange runs in a background thread, on a VICI
    connection of its own (:meth:`StrongSwanBackend.begin_install`); the thread
    touches nothing but that connection and this object."""

    def __init__(self, owner: str, path: PathProfile, record: _Record) -> None:
        self.owner = owner
        self.path = path
        self.record = record
        self._error: _CommandFailed | StrongSwanError | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"PendingInstall(owner={self.owner!r}, peer={self.path.peer})"

    def start(self, socket_path: Path, timeout: float) -> None:
        def run() -> None:
            try:
                with Vici(socket_path, timeout) as v:
                    v.initiate(self.record.name, CHILD_NAME, timeout)
            except (_CommandFailed, StrongSwanError) as exc:
                self._error = exc
            except Exception as exc:  # noqa: BLE001 - never lost in the thread: finish_install raises it
                self._error = StrongSwanError(f"initiating {self.record.name} failed: {exc}")

        self._thread = threading.Thread(target=run, name=f"initiate {self.path.peer}", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> _CommandFailed | StrongSwanError | None:
        """Wait for the exchange (charon gives up after ``timeout``); its error, or None."""
        if self._thread is not None:
            self._thread.join(timeout + 10.0)
            if self._thread.is_alive():
                return CharonUnavailable(f"charon did not answer the initiation of {self.record.name}")
        return self._error


class StrongSwanBackend:
    """The SAs of one node in that node's charon (see the module docstring).

    ``vici_socket_path``: charon's VICI socket (one charon per node);
    ``initiator(path)``: whether this end initiates (:func:`initiator_for`,
    default :func:`default_initiator`); ``timeout``: seconds to wait for the
    peer in an IKE exchange (initiation); ``state_file``: the side
    table, by default ``<vici_socket_path>.aaa_vpn.json``.
    """

    def __init__(
        self,
        node: IPv4Address,
        vici_socket_path: str | os.PathLike[str],
        initiator: Callable[[PathProfile], bool] = default_initiator,
        timeout: float = 5.0,
        state_file: str | os.PathLike[str] | None = None,
        route_into: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.node = node
        self.vici_socket_path = Path(vici_socket_path)
        self.initiator = initiator
        self.timeout = timeout
        self._table = _SideTable(
            Path(state_file) if state_file is not None else Path(str(vici_socket_path) + ".aaa_vpn.json")
        )
        try:
            self._records = self._table.load()
        except SideTableCorrupt:
            self._records = {}  # _sync decides, knowing what charon holds
        self._full: dict[str, InstalledPath] = {}  # paths installed through this object, with their secrets
        self._closed = False
        self._session: Vici | None = None  # kept open between calls (_vici)
        self._loaded: set[str] | None = None  # our connections in charon, as listed and kept up to date
        self._listed_at = 0.0
        # route_into: lead each path's traffic into charon's TUN device (kernel-libipsec,
        # charon started with install_routes = no; aaa_vpn.sa.routing).
        self._routing: PolicyRouting | None = None
        self._routed: set[str] = set()
        self._pending: dict[str, PendingInstall] = {}  # begun, not finished (begin_install)
        if route_into is not None:
            self._routing = PolicyRouting(
                IpCommand(None, options=("-4",)), route_into, 4500, 4500, FWMARK, anchors=True
            )
            try:
                self._routing.start()
                self.paths()  # routes for what charon still holds (after a restart)
            except NetnsError as exc:
                raise SaError(f"cannot set up the routing into {route_into}: {exc}") from None

    def __repr__(self) -> str:
        return f"StrongSwanBackend(node={self.node}, socket={str(self.vici_socket_path)!r}, paths={len(self._records)})"

    @property
    def state_file(self) -> Path:
        return self._table.path

    # -- SaBackend -------------------------------------------------------------------

    def install(self, path: PathProfile, owner: str) -> InstalledPath:
        """Load ``path`` into charon for ``owner``; initiate it if this end initiates
        (see :class:`~aaa_vpn.sa.base.SaBackend` and the module docstring)."""
        started = self.begin_install(path, owner)
        return started if isinstance(started, InstalledPath) else self.finish_install(started)

    def begin_install(self, path: PathProfile, owner: str) -> InstalledPath | PendingInstall:
        """:meth:`install` in two steps (:class:`~aaa_vpn.sa.base.StagedBackend`):
        load key and connection, and, when this end initiates, start the IKE
        exchange on a VICI connection of its own in a background thread and
        return a :class:`PendingInstall` at once, for :meth:`finish_install` to
        wait for. A responding end (or an identical re-install) is done at once:
        the :class:`~aaa_vpn.sa.base.InstalledPath`. Raises as :meth:`install`,
        with nothing left."""
        self._check_open()
        validate_path(path, self.node)
        if path.key_mode is not KeyMode.IKEV2:
            raise SaUnsupported(
                "the strongswan backend keys its SAs with IKEv2: a MANUAL path (AAA-issued ESP keys) "
                "needs the memory, xfrm or userspace backend"
            )
        if path.ike_psk is None or not path.ike_psk:
            raise SaError("an IKEv2 path needs its pre-shared key (ike_psk)")
        if not path.ike_proposal:
            raise SaError("an IKEv2 path needs its IKE proposal (ike_proposal)")
        if path.lifetime < 1:
            raise SaError(f"invalid lifetime {path.lifetime}: at least 1 second")
        name = connection_name(owner, path.peer, path.spi_in)
        public, print_ = public_fields(path), fingerprint(path)
        with self._vici() as v:
            loaded = self._sync(v)
            existing = self._records.get(name)
            if existing is not None:
                if existing.owner == owner and existing.same_path(public, print_):
                    installed = InstalledPath(owner=owner, path=path)
                    self._full[name] = installed
                    return installed  # identical: a no-op
                raise SaConflict(f"inbound SPI 0x{path.spi_in:08x} is already in use on {self.node}")
            for record in [*self._records.values(), *(p.record for p in self._pending.values())]:
                if int(record.fields["spi_in"]) == path.spi_in:
                    raise SaConflict(f"inbound SPI 0x{path.spi_in:08x} is already in use on {self.node}")
            if name in loaded:  # left by an install that died half-way: ours by its name, but unknown
                log.warning("removing an unrecorded connection first", extra={"fields": {"conn": name}})
                self._teardown(v, name)
            initiate = bool(self.initiator(path))
            if self._routing is not None:
                self._routing.acquire(path)  # SaError, with nothing left, if it cannot
            record = _Record(name, owner, 0, initiate, print_, public)
            try:
                v.load_shared(name, path.ike_psk.value, [ike_identity(path.local, path.spi_in), self._peer_id(path)])
                v.load_conn({name: self._connection(path, initiate)})
                self._note_loaded(name)
            except _CommandFailed as exc:
                self._rollback(v, name)
                self._unroute(path)
                raise StrongSwanError(f"charon refused the path toward {path.peer}: {exc.errmsg}") from None
            except BaseException:
                self._rollback(v, name)
                self._unroute(path)
                raise
            pending = PendingInstall(owner, path, record)
            if not initiate:
                return self._commit(pending)
            self._pending[name] = pending
            pending.start(self.vici_socket_path, self.timeout)
        return pending

    def finish_install(self, pending: PendingInstall) -> InstalledPath:
        """Wait for the IKE exchange :meth:`begin_install` started: the installed
        path once its CHILD_SA is established, or (nothing left of the path) the
        error :meth:`install` would have raised."""
        self._pending.pop(pending.record.name, None)
        name, path = pending.record.name, pending.path
        try:
            error = pending.wait(self.timeout)
        except BaseException:  # interrupted while waiting: the path goes, as in install
            with contextlib.suppress(SaError), self._vici() as v:
                self._rollback(v, name)
            self._unroute(path)
            raise
        if error is None:
            return self._commit(pending)
        with self._vici() as v:
            self._rollback(v, name)
        self._unroute(path)
        if isinstance(error, _CommandFailed):
            raise _classify(error, path, self.timeout) from None
        raise error

    def _commit(self, pending: PendingInstall) -> InstalledPath:
        """Record a path whose connection is loaded (and, if this end initiates, established)."""
        record = pending.record
        try:
            record.seq = max((r.seq for r in self._records.values()), default=0) + 1
            self._records[record.name] = record
            self._table.save(self._records)
        except BaseException:
            with self._vici() as v:
                self._rollback(v, record.name)
            self._unroute(pending.path)
            raise
        if self._routing is not None:
            self._routed.add(record.name)
        installed = InstalledPath(owner=pending.owner, path=pending.path)
        self._full[record.name] = installed
        log.info("path installed", extra={"fields": {"conn": record.name, "initiator": record.initiator}})
        return installed

    def delete(self, owner: str, peer: IPv4Address | None = None) -> int:
        """Terminate and unload ``owner``'s paths (toward ``peer`` only, if given); return how many."""
        self._check_open()
        with self._vici() as v:
            loaded = self._sync(v)
            doomed: list[str] = []
            for name in sorted(loaded, key=self._order):
                parsed = parse_connection_name(name)
                if parsed is not None and parsed.owner == owner and (peer is None or parsed.peer == peer):
                    doomed.append(name)
            try:
                for name in doomed:
                    self._teardown(v, name)
                    record = self._records.pop(name, None)
                    self._full.pop(name, None)
                    if record is not None and name in self._routed:
                        self._routed.discard(name)
                        self._unroute(path_from_public_fields(record.fields))
            finally:
                if doomed:
                    self._table.save(self._records)
        if doomed:
            log.info("paths deleted", extra={"fields": {"owner": owner, "count": len(doomed)}})
        return len(doomed)

    def paths(self) -> list[InstalledPath]:
        """The paths loaded in charon that this backend (or an earlier one) installed, in order."""
        self._check_open()
        with self._vici() as v:
            self._sync(v)
        return [self._installed(record) for record in sorted(self._records.values(), key=_seq)]

    def close(self) -> None:
        """Forget the in-memory state; charon keeps the connections and SAs (see the module docstring)."""
        self._full.clear()
        self._closed = True
        self._drop_session()

    # -- beyond the interface ------------------------------------------------------------

    def sas(self, owner: str | None = None, peer: IPv4Address | None = None) -> list[IkeSaState]:
        """The IKE_SAs (with their CHILD_SAs) of this backend's connections, optionally
        of one owner (toward one peer)."""
        self._check_open()
        with self._vici() as v:
            result = []
            for sa in v.ike_sas():
                parsed = parse_connection_name(sa.name)
                if parsed is None or (owner is not None and parsed.owner != owner):
                    continue
                if peer is None or parsed.peer == peer:
                    result.append(sa)
        return result

    def counters(self, owner: str | None = None) -> list[SaCounters]:
        """Per-SA counters of ``owner``'s CHILD_SAs (all, if None) from charon's
        ``list-sas`` (inbound then outbound per CHILD_SA): what accounting
        reads (docs/accounting.md), in the shape of the memory backend's. An
        SA charon re-keyed counts from its new CHILD_SA on."""
        result: list[SaCounters] = []
        for sa in self.sas(owner):
            parsed = parse_connection_name(sa.name)
            peer = parsed.peer if parsed is not None else IPv4Address(0)
            name = parsed.owner if parsed is not None else sa.name
            for child in sa.installed:
                result.append(SaCounters(name, Direction.IN, child.spi_in, peer, child.packets_in, child.bytes_in, {}))
                result.append(
                    SaCounters(name, Direction.OUT, child.spi_out, peer, child.packets_out, child.bytes_out, {})
                )
        return result

    def daemon_version(self) -> str:
        """charon's name and version, e.g. ``charon-systemd 5.9.8``."""
        with self._vici() as v:
            return v.version()

    # -- internals -------------------------------------------------------------------------

    def _unroute(self, path: PathProfile) -> None:
        if self._routing is not None:
            self._routing.release(path)

    def _check_open(self) -> None:
        if self._closed:
            raise SaError(f"the strongswan backend of {self.node} is closed")

    @contextlib.contextmanager
    def _vici(self) -> Iterator[Vici]:
        """The VICI connection, kept open between calls (one connect and one
        ``list-conns`` less per call); a new one when charon closed the old
        (it stopped or restarted), and none kept after a failure to talk to
        charon or an interruption mid-command."""
        session = self._session
        if session is not None and not session.usable():
            self._drop_session()
            session = None
        if session is None:
            session = self._session = Vici(self.vici_socket_path, self.timeout)
        try:
            yield session
        except (_CommandFailed, SaError) as exc:
            if isinstance(exc, CharonUnavailable):
                self._drop_session()
            raise
        except BaseException:
            self._drop_session()
            raise

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None
        self._loaded = None  # a new connection lists again: charon may be another one

    def _order(self, name: str) -> tuple[int, str]:
        record = self._records.get(name)
        return (record.seq if record is not None else 1 << 62, name)

    def _sync(self, v: Vici) -> set[str]:
        """Our connection names loaded in charon. Re-reads the side table (another backend
        object of this node may have changed it) and forgets recorded paths that charon
        no longer has (it was restarted) or that belong to another node.

        charon's connections are listed (``list-conns``) on a new VICI
        connection, when another object changed the side table, and at least
        every :data:`RELIST_SECONDS`; in between, this object's own loads and
        unloads keep the list (charon never drops a connection by itself)."""
        corrupt: SideTableCorrupt | None = None
        try:
            records = self._table.load()
        except SideTableCorrupt as exc:
            records, corrupt = {}, exc
        now = time.monotonic()
        if self._loaded is None or corrupt or self._table.changed or now - self._listed_at >= RELIST_SECONDS:
            self._loaded = {name for name in v.connection_names() if parse_connection_name(name) is not None}
            self._listed_at = now
        loaded = set(self._loaded)
        self._records = records
        if corrupt is not None:
            if loaded:
                raise corrupt
            # Nothing of ours in charon (a machine that lost power before the
            # rename reached the disk): nothing is lost by starting over.
            log.warning(
                "side table unreadable, charon holds none of our paths: starting over",
                extra={"fields": {"error": str(corrupt)}},
            )
            self._records = {}
            self._table.save(self._records)
        gone = [n for n, r in self._records.items() if n not in loaded or r.fields["local"] != str(self.node)]
        for name in gone:
            record = self._records.pop(name)
            self._full.pop(name, None)
            if name in self._routed:
                self._routed.discard(name)
                self._unroute(path_from_public_fields(record.fields))
        if self._routing is not None:
            for name, record in self._records.items():
                if name not in self._routed:  # held by charon from before this object: route it
                    self._routing.acquire(path_from_public_fields(record.fields))
                    self._routed.add(name)
        if gone:
            self._table.save(self._records)
        return loaded

    def _installed(self, record: _Record) -> InstalledPath:
        full = self._full.get(record.name)
        if full is not None and record.same_path(public_fields(full.path), fingerprint(full.path)):
            return full  # with its secrets, as installed through this object
        return InstalledPath(owner=record.owner, path=path_from_public_fields(record.fields))

    @staticmethod
    def _peer_id(path: PathProfile) -> str:
        return ike_identity(path.peer, path.spi_out)

    def _connection(self, path: PathProfile, initiate: bool) -> dict[str, object]:
        times = lifetimes(path.lifetime, initiate)
        return {
            "version": "2",
            "local_addrs": [str(path.local)],
            "remote_addrs": [str(path.peer)],
            "proposals": [path.ike_proposal],
            "local": {"auth": "psk", "id": ike_identity(path.local, path.spi_in)},
            "remote": {"auth": "psk", "id": self._peer_id(path)},
            "keyingtries": "1",  # one attempt; install reports the failure and cleans up
            "mobike": "no",
            "unique": "no",
            "send_certreq": "no",
            "reauth_time": "0",
            "rekey_time": f"{times.ike_rekey}s",
            "over_time": f"{times.ike_over}s",
            "rand_time": f"{times.rand}s",
            "children": {
                CHILD_NAME: {
                    "mode": "tunnel",
                    "local_ts": [str(n) for n in path.local_ts],
                    "remote_ts": [str(n) for n in path.remote_ts],
                    "esp_proposals": [path.esp_transform.value],
                    "life_time": f"{times.child_life}s",
                    "rekey_time": f"{times.child_rekey}s",
                    "rand_time": f"{times.rand}s",
                    "start_action": "none",
                    "close_action": "none",
                    "dpd_action": "clear",
                    # Our own reqid (the path's inbound SPI, unique on the node):
                    # charon would share one between CHILD_SAs with equal
                    # selectors (the new FA's FA-HA path and the receiving end of
                    # the forwarding path), and the outbound SA would be either.
                    "reqid": str(path.spi_in),
                    # The forwarding path is the least preferred way out: at the
                    # new FA it only receives, the node's own paths send.
                    **({"priority": str(FORWARDING_POLICY_PRIORITY)} if path.role is PathRole.FA_FA else {}),
                }
            },
        }

    def _teardown(self, v: Vici, name: str) -> None:
        """Terminate the connection's SAs with the peer, then unload it and its key."""
        with contextlib.suppress(_CommandFailed):  # no SA (any more): nothing to terminate
            v.terminate(name)
        with contextlib.suppress(_CommandFailed):  # not loaded
            v.unload_conn(name)
        if self._loaded is not None:
            self._loaded.discard(name)
        with contextlib.suppress(_CommandFailed):
            v.unload_shared(name)

    def _note_loaded(self, name: str) -> None:
        if self._loaded is not None:
            self._loaded.add(name)

    def _rollback(self, v: Vici, name: str) -> None:
        """Best effort after a failed install: charon may be gone too."""
        self._records.pop(name, None)
        with contextlib.suppress(CharonUnavailable):
            self._teardown(v, name)


def _classify(exc: _CommandFailed, path: PathProfile, timeout: float) -> NegotiationFailed:
    """The error a failed ``initiate`` means, from charon's message and logs (never key material)."""
    logs = "\n".join(exc.logs)
    peer = path.peer
    if "not established after" in exc.errmsg or "peer not responding" in logs or "giving up after" in logs:
        return PeerUnreachable(
            f"no IKE answer from {peer} within {timeout:g} s: is its charon running and reachable from {path.local}?"
        )
    if "NO_PROPOSAL_CHOSEN" in logs or "no acceptable proposal" in logs:
        if "no CHILD_SA built" in logs:
            return ProposalMismatch(
                f"{peer} accepts none of the ESP transforms offered ({path.esp_transform.value}); "
                "the IKE_SA was established and has been deleted"
            )
        return ProposalMismatch(
            f"{peer} accepts none of the IKE proposals offered ({path.ike_proposal}), "
            f"or has no connection at all from {path.local} (no end of any path installed there)"
        )
    if "AUTHENTICATION_FAILED" in logs or re.search(r"authentication of .* failed", logs):
        return AuthenticationFailed(
            f"PSK authentication with {peer} failed: the keys differ, or {peer} has not installed its end of "
            f"this path (identities {ike_identity(path.local, path.spi_in)} / {ike_identity(peer, path.spi_out)})"
        )
    selectors = f"{[str(n) for n in path.local_ts]} === {[str(n) for n in path.remote_ts]}"
    if "TS_UNACCEPTABLE" in logs:
        return NegotiationFailed(
            f"{peer} refused the traffic selectors {selectors} (they differ from its end's, or it could not "
            "install them: kernel-libipsec needs an address of the node inside its local selectors)"
        )
    if "unable to install" in logs:
        return NegotiationFailed(
            f"this node could not install the CHILD_SA for {selectors} (kernel-libipsec needs an address of "
            "the node inside its local selectors)"
        )
    return NegotiationFailed(f"establishing the CHILD_SA with {peer} failed: {exc.errmsg}")
