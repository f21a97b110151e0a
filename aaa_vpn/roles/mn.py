"""The mobile node simulator, sans-IO: registers with NAI, MN-HA and MN-AAA
authentication, moves between foreign agents, deregisters.

Rules (RFC 5944 sections 3.3, 3.6 and 5.7; RFC 4721):

1. A Registration Request carries, in this order: the NAI (RFC 2794), the
   previous FA when moving (an NVSE, docs/protocol.md), MN-HA authentication,
   the MN-FA challenge of this FA if it has one, and MN-AAA authentication
   with CHAP_SPI (RFC 4721 sections 6 and 8). Its Identification is a
   timestamp (section 5.7), new for every request, retransmissions included.
2. Without a challenge of that FA it sends the request anyway: the FA answers
   105 (or 104/106) with a fresh challenge, and the node sends again at once.
   Every accepted reply may carry the challenge for the next registration.
3. An accepted reply must carry a valid MN-HA authenticator, or it is
   ignored (the node keeps waiting and retransmits). The granted lifetime is
   the smaller of the requested and the replied one.
4. Unanswered requests are sent again (RFC 5944 section 3.6.3): the first
   time after ``retransmit`` seconds (at least 1 s in a real deployment),
   then twice as long each time, never longer than the requested lifetime;
   at most ``attempts`` transmissions, and a last wait as long as the one
   before; then the registration fails (reported as code 78). Each
   transmission has a new Identification (timestamps, section 5.7) and the
   same challenge -- the node has no other until a reply brings one --,
   which is how the FA recognises it (fa.py rule R1, RFC 4721).
5. A reply answers the outstanding registration if its Identification
   matches that of any of the registration's transmissions (the low 32
   bits, section 5.7) and it authenticates: an agent that got the request
   more than once answers one of them, not necessarily the last.
6. With ``request_keys`` every registration (not a deregistration) asks the
   home AAA for an MN-FA and an MN-HA key (RFC 3957 sections 3 and 6.1,
   6.3): Generalized MN-FA and MN-HA Key Generation Nonce Requests of
   subtype AAA, naming ``mn_fa_key_spi`` and ``mn_ha_key_spi``, right after
   the NAI (so that every authenticator covers them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from aaa_vpn.roles.agent import Address, Agent, Channel, RegistrationDone, backoff
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import (
    ChallengeExtension,
    ExtensionType,
    GeneralizedAuthSubtype,
    KeyRequestExtension,
    NaiExtension,
    RegistrationFlags,
    ReplyCode,
)
from aaa_vpn.wire.mip_auth import (
    CHAP_SPI,
    append_authentication,
    append_generalized_authentication,
    verify_authentication,
)
from aaa_vpn.wire.mip_replay import identification_matches, timestamp_identification
from aaa_vpn.wire.mip_vpn import previous_fa_extension

_CHALLENGE_CODES = (ReplyCode.FA_MISSING_CHALLENGE, ReplyCode.FA_UNKNOWN_CHALLENGE, ReplyCode.FA_STALE_CHALLENGE)
#: How often one registration starts over with a challenge an FA's reply brought (rule 2).
CHALLENGE_RETRIES = 2


@dataclass(frozen=True)
class MnConfig:
    """A mobile node's identity and keys."""

    nai: str
    home_address: IPv4Address
    home_agent: IPv4Address
    mn_ha_spi: int
    mn_ha_key: Secret = field(repr=False)
    mn_aaa_secret: Secret = field(repr=False)
    lifetime: int = 600
    retransmit: float = 1.0
    """Seconds before the first retransmission (doubled each time, rule 4)."""
    attempts: int = 5
    """Transmissions of one request before it fails: 5 wait 1+2+4+8+16 = 31 s in all,
    longer than an FA's worst case (RADIUS, then ha_timeout: docs/protocol.md section 3.11)."""
    request_keys: bool = False
    """Rule 6: ask the home AAA for an MN-FA and an MN-HA key (RFC 3957)."""
    mn_fa_key_spi: int = 0x3958
    """Rule 6: the SPI the node gives the MSA with its FA (Mobile Node SPI of its request)."""
    mn_ha_key_spi: int = 0x3957
    """Rule 6: the SPI the node gives the MSA with its HA; not its provisioned ``mn_ha_spi``."""


def give_up_after(config: MnConfig, lifetime: int | None = None) -> float:
    """The longest one registration (or, ``lifetime`` 0, deregistration) can
    take before the node reports 78: ``attempts`` transmissions and their
    waits (rule 4), started over at most :data:`CHALLENGE_RETRIES` times with
    a new challenge (rule 2)."""
    lifetime = config.lifetime if lifetime is None else lifetime
    waits = [backoff(config.retransmit, n) for n in range(1, config.attempts + 1)]
    if lifetime:
        waits = [min(w, max(config.retransmit, float(lifetime))) for w in waits]
    return (1 + CHALLENGE_RETRIES) * sum(waits)


@dataclass
class _Outstanding:
    fa: Address
    lifetime: int
    previous_fa: IPv4Address | None
    identification: int = 0
    identifications: list[int] = field(default_factory=list)  # of every transmission (rule 5)
    attempts: int = 0
    challenge_retries: int = 0
    timer: int | None = None


class MobileNode(Agent):
    """One simulated mobile node."""

    def __init__(self, config: MnConfig, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.config = config
        self.random_bytes = random_bytes
        self.current_fa: Address | None = None
        self.registered_until = 0.0
        self._challenges: dict[str, bytes] = {}  # FA address -> challenge for the next request
        self._outstanding: _Outstanding | None = None
        self._last_sent = 0

    # -- the API --------------------------------------------------------------------------------
    def register(self, fa: Address, now: float, previous_fa: IPv4Address | None = None) -> None:
        """Register through the FA at ``fa`` (its Mobile IP address and port)."""
        self._start(_Outstanding(fa, self.config.lifetime, previous_fa), now)

    def deregister(self, now: float) -> None:
        """Deregister (lifetime 0) through the current FA."""
        if self.current_fa is None:
            raise ValueError("not registered")
        self._start(_Outstanding(self.current_fa, 0, None), now)

    # -- inputs ---------------------------------------------------------------------------------
    def receive_datagram(self, channel: Channel, data: bytes, source: Address, now: float) -> None:
        outstanding = self._outstanding
        try:
            reply = mip.decode_registration_reply(data)
        except mip.MipDecodeError:
            self.counters["dropped.malformed"] += 1
            return
        if outstanding is None or source[0] != outstanding.fa[0]:
            self.counters["dropped.unexpected"] += 1
            return
        if not any(identification_matches(reply.identification, sent) for sent in outstanding.identifications):
            self.counters["dropped.unmatched"] += 1
            return
        challenge = next((e.challenge for e in reversed(reply.extensions) if isinstance(e, ChallengeExtension)), None)
        if challenge is not None:
            self._challenges[outstanding.fa[0]] = challenge
        if (
            reply.code in _CHALLENGE_CODES
            and challenge is not None
            and outstanding.challenge_retries < CHALLENGE_RETRIES
        ):
            # A new request with the challenge the FA gave: its own transmissions.
            outstanding.challenge_retries += 1
            outstanding.attempts = 0
            outstanding.identifications.clear()
            self._send_request(outstanding, now)
            return
        if reply.accepted and not verify_authentication(
            data, ExtensionType.MN_HA_AUTH, self.config.mn_ha_key, spi=self.config.mn_ha_spi
        ):
            self.counters["dropped.bad_mn_ha_auth"] += 1
            return
        self._cancel(outstanding.timer)
        self._outstanding = None
        if reply.accepted:
            lifetime = min(reply.lifetime, outstanding.lifetime)
            self.current_fa = outstanding.fa if lifetime else None
            self.registered_until = now + lifetime
            self._emit(RegistrationDone(self.config.nai, self.config.home_address, int(reply.code), lifetime))
        else:
            self._emit(RegistrationDone(self.config.nai, self.config.home_address, int(reply.code), 0, "denied"))

    # -- requests -------------------------------------------------------------------------------
    def _start(self, outstanding: _Outstanding, now: float) -> None:
        if self._outstanding is not None:
            self._cancel(self._outstanding.timer)
        self._outstanding = outstanding
        self._send_request(outstanding, now)

    def _send_request(self, outstanding: _Outstanding, now: float) -> None:
        outstanding.attempts += 1
        # RFC 5944 section 5.7: every request newer than the last one.
        outstanding.identification = max(
            timestamp_identification(now, int.from_bytes(self.random_bytes(2), "big") & 0xFFF), self._last_sent + 1
        )
        self._last_sent = outstanding.identification
        outstanding.identifications.append(outstanding.identification)
        self._send(Channel.MIP, self._request_bytes(outstanding), outstanding.fa)
        self._cancel(outstanding.timer)
        delay = backoff(self.config.retransmit, outstanding.attempts)
        if outstanding.lifetime:
            delay = min(delay, max(self.config.retransmit, float(outstanding.lifetime)))
        outstanding.timer = self._call_at(now + delay, self._retransmit)

    def _retransmit(self, now: float) -> None:
        outstanding = self._outstanding
        if outstanding is None:
            return
        if outstanding.attempts >= self.config.attempts:
            self._outstanding = None
            self._emit(
                RegistrationDone(
                    self.config.nai, self.config.home_address, int(ReplyCode.FA_REGISTRATION_TIMEOUT), 0, "no reply"
                )
            )
            return
        self._send_request(outstanding, now)

    def _request_bytes(self, outstanding: _Outstanding) -> bytes:
        c = self.config
        extensions: list[mip.Extension] = [NaiExtension(c.nai)]
        if c.request_keys and outstanding.lifetime:  # rule 6
            extensions += [
                KeyRequestExtension(ExtensionType.MN_FA_KEY_REQUEST, c.mn_fa_key_spi),
                KeyRequestExtension(ExtensionType.MN_HA_KEY_REQUEST, c.mn_ha_key_spi),
            ]
        if outstanding.previous_fa is not None:
            extensions.append(previous_fa_extension(outstanding.previous_fa))
        request = mip.RegistrationRequest(
            flags=RegistrationFlags.T,  # reverse tunnelling through the HA (RFC 3024)
            lifetime=outstanding.lifetime,
            home_address=c.home_address,
            home_agent=c.home_agent,
            care_of_address=IPv4Address(outstanding.fa[0]),
            identification=outstanding.identification,
            extensions=tuple(extensions),
        )
        data = append_authentication(
            mip.encode_registration_request(request), ExtensionType.MN_HA_AUTH, c.mn_ha_spi, c.mn_ha_key
        )
        challenge = self._challenges.get(outstanding.fa[0])
        if challenge is not None:
            data += mip.encode_extension(ChallengeExtension(challenge))
            data = append_generalized_authentication(data, GeneralizedAuthSubtype.MN_AAA, CHAP_SPI, c.mn_aaa_secret)
        return data
