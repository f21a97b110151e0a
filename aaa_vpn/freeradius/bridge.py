"""The home AAA hosted by FreeRADIUS: a request's value pairs in, FreeRADIUS's
answer (module return code, reply pairs, control pairs) out.

Rules:

1. The decision is the home AAA role's (:mod:`aaa_vpn.roles.home_aaa`,
   through :class:`~aaa_vpn.service.home.HomeService` and its store): every
   rule there holds unchanged -- who may ask what, the MN-AAA proof, the five
   FA-registration cases, the session written before the answer, the views
   and flavours. FreeRADIUS has already done the RADIUS plumbing (its own
   clients and secrets, duplicates, Message-Authenticator, Proxy-State).
2. The client: the address FreeRADIUS received the request from, which the
   configuration hands over in the control list as
   ``FreeRADIUS-Client-IP-Address`` (``Packet-Src-IP-Address`` is not a pair
   rlm_python3 passes; docs/freeradius-module.md). It must be a client in
   aaa_vpn's database too (role, flavour, network, domain); its shared secret
   there never leaves this process. A request without that pair, or from an
   address the database does not know, is answered ``fail`` and logged.
3. The request: every pair whose name the project's dictionaries define
   becomes its RADIUS attribute (:class:`~aaa_vpn.freeradius.pairs.PairCodec`);
   FreeRADIUS's own internal pairs, Message-Authenticator, Proxy-State and
   User-Password (decrypted by FreeRADIUS; not the home AAA's) are left out.
   The attributes are sealed into an Access-Request under the client's secret
   in the database (fresh Request Authenticator, Message-Authenticator first)
   and handed to the role from the client's address. A pair that cannot be converted is a Bad-Request reject, like a
   request the role cannot decode.
4. The answer: an Access-Accept becomes ``updated`` with its attributes as
   reply pairs (salt-encrypted values decrypted, so that FreeRADIUS encrypts
   them again for its client; Message-Authenticator asked for, so that
   FreeRADIUS signs the Accept as the standalone server does) and, from
   ``authorize``, ``Auth-Type := Accept``. An Access-Reject becomes
   ``reject`` with its Reply-Message and Aaa-Vpn-Reject-Reason. No answer
   (the store did not take the session write in time: roles/home_aaa.py
   rule 10) becomes ``handled`` with ``Response-Packet-Type :=
   Do-Not-Respond``, so the client's retransmission is decided anew.
5. Batches: :meth:`HostedHome.decide` takes every request waiting at once and
   hands them to the service as one batch, so their session writes share one
   transaction (group commit), as in the standalone server.

Not thread-safe: one thread owns a :class:`HostedHome` and its store
(:mod:`aaa_vpn.freeradius.module` runs it in a worker thread). No sockets.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from aaa_vpn.freeradius.pairs import Pair, PairCodec, PairError
from aaa_vpn.roles.home_aaa import reject_attributes
from aaa_vpn.service.home import HomeService
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import RejectReason

log = logging.getLogger("aaa_vpn.freeradius")

# FreeRADIUS's module return codes (src/include/modules.h; the same numbers
# rlm_python3 puts in its ``radiusd`` module).
RLM_MODULE_REJECT = 0
RLM_MODULE_FAIL = 1
RLM_MODULE_OK = 2
RLM_MODULE_HANDLED = 3
RLM_MODULE_NOOP = 7
RLM_MODULE_UPDATED = 8

#: The control pair that names the client's address (rule 2).
CLIENT_ADDRESS = "FreeRADIUS-Client-IP-Address"
#: Rule 4: asks FreeRADIUS to sign its Access-Accept.
SIGN_REPLY: Pair = ("Message-Authenticator", "0x00")
ACCEPT: Pair = ("Auth-Type", "Accept")
DO_NOT_RESPOND: Pair = ("Response-Packet-Type", "Do-Not-Respond")
#: Rule 3: FreeRADIUS checked these; User-Password comes decrypted (RFC 2865
#: section 5.2 hides it on the wire) and the home AAA does not read it.
_LEFT_OUT = frozenset({"Message-Authenticator", "Proxy-State", "User-Password"})


@dataclass(frozen=True)
class HostedRequest:
    """One request as rlm_python3 hands it over."""

    pairs: tuple[Pair, ...]
    """The request list."""
    client: str
    """The client's address (rule 2); empty if the control list did not name it."""
    section: str = "authorize"
    """``authorize`` or ``post-auth``: where FreeRADIUS called the module."""


@dataclass(frozen=True)
class Answer:
    """What the module returns to FreeRADIUS."""

    code: int
    """A FreeRADIUS module return code (``RLM_MODULE_*``)."""
    reply: tuple[Pair, ...] = ()
    config: tuple[Pair, ...] = ()
    outcome: str = ""
    """accept, reject, no-answer, unknown-client or no-client (for counters and logs)."""

    def as_rlm(self) -> int | tuple[int, tuple[tuple[str, str, str], ...], tuple[tuple[str, str, str], ...]]:
        """The value an rlm_python3 function returns. Reply pairs go with
        ``+=``: a 2-tuple means ``=``, which adds nothing when an attribute of
        that name is there already, whatever its tag -- the second path's
        attributes would be lost. Control pairs go with ``:=``."""
        if not self.reply and not self.config:
            return self.code
        return (
            self.code,
            tuple((name, "+=", value) for name, value in self.reply),
            tuple((name, ":=", value) for name, value in self.config),
        )


class HostedHome:
    """The home AAA of one FreeRADIUS server (module rules)."""

    def __init__(
        self,
        service: HomeService,
        codec: PairCodec,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.service = service
        self.codec = codec
        self.random_bytes = random_bytes
        self._identifiers = itertools.count()
        # Every request of a batch gets its own source port, so that each
        # reply finds its request (and none is taken for a retransmission).
        self._ports = itertools.count()

    @property
    def counters(self) -> dict[str, int]:
        return self.service.counters

    def decide(self, requests: Sequence[HostedRequest], now: float) -> list[Answer]:
        """Rules 1-5: the answers to ``requests``, in order."""
        answers: list[Answer | None] = [None] * len(requests)
        sent: dict[tuple[str, int], tuple[int, bytes, bytes]] = {}  # source -> (index, authenticator, secret)
        batch: list[tuple[bytes, tuple[str, int]]] = []
        for index, request in enumerate(requests):
            prepared = self._prepare(request)
            if isinstance(prepared, Answer):
                answers[index] = prepared
                continue
            datagram, source, authenticator, secret = prepared
            sent[source] = (index, authenticator, secret)
            batch.append((datagram, source))
        if batch:
            for reply, destination in self.service.handle_batch(batch, now):
                entry = sent.pop(destination, None)
                if entry is None:
                    continue
                index, authenticator, secret = entry
                answers[index] = self._answer(requests[index], reply, authenticator, secret)
        for index, _, _ in sent.values():
            self.counters["freeradius.no_answer"] += 1
            answers[index] = Answer(RLM_MODULE_HANDLED, (), (DO_NOT_RESPOND,), "no-answer")
        return [answer for answer in answers if answer is not None]

    # -- rule 2 and 3 ---------------------------------------------------------------------------
    def _prepare(self, request: HostedRequest) -> Answer | tuple[bytes, tuple[str, int], bytes, bytes]:
        try:
            address = str(IPv4Address(request.client.strip()))
        except ValueError:
            self.counters["freeradius.no_client"] += 1
            log.error(
                "no client address: the configuration must set control:%s := '%%{Packet-Src-IP-Address}' "
                "before calling the module (docs/freeradius-module.md)",
                CLIENT_ADDRESS,
            )
            return Answer(RLM_MODULE_FAIL, outcome="no-client")
        client = self.service.role.server.clients.lookup(address)
        if client is None and self.service.provisioning.refresh():
            self.service.role.refresh()
            client = self.service.role.server.clients.lookup(address)
        if client is None:
            self.counters["freeradius.unknown_client"] += 1
            log.error("client %s is not in aaa_vpn's database (aaa-vpn client add)", address)
            return Answer(RLM_MODULE_FAIL, outcome="unknown-client")
        secret = client.secret.value
        try:
            attributes = self._attributes(request.pairs)
        except PairError as exc:
            self.counters["freeradius.bad_pair"] += 1
            log.warning("request from %s: %s", address, exc)
            reply = self._pairs(reject_attributes(RejectReason.BAD_REQUEST, f"bad request: {exc}"), secret, b"")
            return Answer(RLM_MODULE_REJECT, tuple(reply), (), "reject")
        authenticator = self.random_bytes(rc.AUTHENTICATOR_LENGTH)
        identifier = next(self._identifiers) & 0xFF
        port = 1 + next(self._ports) % 65535
        try:
            datagram = rc.seal_request(rc.ACCESS_REQUEST, identifier, authenticator, secret, attributes)
        except rc.ReplyTooLarge as exc:
            self.counters["freeradius.bad_pair"] += 1
            reply = self._pairs(reject_attributes(RejectReason.BAD_REQUEST, str(exc)), secret, b"")
            return Answer(RLM_MODULE_REJECT, tuple(reply), (), "reject")
        return datagram, (address, port), authenticator, secret

    def _attributes(self, pairs: Sequence[Pair]) -> bytes:
        out = []
        for name, value in pairs:
            if name.split(":", 1)[0] in _LEFT_OUT:
                continue
            attribute = self.codec.attribute(name, value)
            if attribute is not None:
                out.append(attribute)
        return b"".join(out)

    # -- rule 4 ---------------------------------------------------------------------------------
    def _answer(self, request: HostedRequest, reply: bytes, authenticator: bytes, secret: bytes) -> Answer:
        code = reply[0]
        try:
            pairs = self.codec.reply_pairs(reply[rc.HEADER_LENGTH :], secret, authenticator)
        except (PairError, rc.RadiusDecodeError) as exc:  # our own reply: a bug, not the peer's fault
            self.counters["freeradius.bad_reply"] += 1
            log.error("cannot hand the home AAA's reply to FreeRADIUS: %s", exc)
            return Answer(RLM_MODULE_FAIL, outcome="bad-reply")
        if code == rc.ACCESS_ACCEPT:
            self.counters["freeradius.accept"] += 1
            config = (ACCEPT,) if request.section == "authorize" else ()
            return Answer(RLM_MODULE_UPDATED, (SIGN_REPLY, *pairs), config, "accept")
        self.counters["freeradius.reject"] += 1
        return Answer(RLM_MODULE_REJECT, tuple(pairs), (), "reject")

    def _pairs(self, attributes: Sequence[bytes], secret: bytes, authenticator: bytes) -> list[Pair]:
        return self.codec.reply_pairs(b"".join(attributes), secret, authenticator or bytes(16))


__all__ = [
    "ACCEPT",
    "CLIENT_ADDRESS",
    "DO_NOT_RESPOND",
    "RLM_MODULE_FAIL",
    "RLM_MODULE_HANDLED",
    "RLM_MODULE_NOOP",
    "RLM_MODULE_OK",
    "RLM_MODULE_REJECT",
    "RLM_MODULE_UPDATED",
    "SIGN_REPLY",
    "Answer",
    "HostedHome",
    "HostedRequest",
]
