"""Mobile IPv4 authenticators: computing, appending, finding and verifying them,
and what a foreign agent keeps, strips and appends when it relays.

* RFC 5944 section 3.5.1: the authenticator of an MN-HA (32), MN-FA (33) or
  FA-HA (34) extension is HMAC-MD5 (RFC 2104, the mandatory default) over the
  UDP payload from its first octet up to and including the Type, Length and
  SPI of the extension itself. The Authenticator field and the UDP header are
  not covered. A security context names its algorithm (sections 1.6 and
  5.1). An MSA the home AAA makes for the mobile node names HMAC-SHA-1 (RFC
  4004 section 9.8, MIP-Algorithm-Type 2; RFC 3957's Algorithm Identifier):
  its authenticator is the full 20-octet HMAC-SHA-1 over the same octets
  (:data:`MSA_ALGORITHMS`; the ``algorithm`` argument of
  :func:`append_authentication` and :func:`verify_authentication`).
* RFC 4721 section 6: the MN-AAA authenticator (generalized authentication
  36, subtype 1) covers the same way, up to and including Type, Subtype,
  Length and SPI; HMAC-MD5 is the default.
* RFC 4721 section 8: with the reserved SPI :data:`CHAP_SPI` (2) the MN-AAA
  authenticator is the RADIUS-style ``MD5(Challenge[0] || Key ||
  MD5(preceding || Type, Subtype, Length, SPI) || Challenge[-237:])``, which a
  foreign agent forwards to the home AAA as CHAP-Password and CHAP-Challenge
  (:class:`MnAaaProof`, docs/mn-aaa-chap.md).
* RFC 3957 section 5: a key the home AAA generates for the mobile node's MSA
  with its FA or HA is ``HMAC-SHA1(AAA-key, Key Generation Nonce || Mobile
  Node identifier)`` (:func:`derive_aaa_key`), the identifier being the NAI
  if the request carries one, else the home address (:func:`mn_identifier`).
* RFC 5944 section 3.7.2.2 (requests) and 3.7.3.2 (replies): a relaying FA
  changes nothing from the fixed part through the authorization-enabling
  extension, removes what follows it, may append its own extensions and then
  its authentication extension (:func:`relay_request`, :func:`relay_reply`).

Everything works on the encoded message, because that is what the
authenticator covers: a relayed message is cut from the received bytes, never
re-encoded. Authenticators are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aaa_vpn.secret import Secret
from aaa_vpn.wire.mip import (
    AUTH_HEADER_LENGTH,
    GENERALIZED_AUTH_HEADER_LENGTH,
    AuthenticationExtension,
    ChallengeExtension,
    Extension,
    ExtensionSpan,
    ExtensionType,
    GeneralizedAuthExtension,
    GeneralizedAuthSubtype,
    KeyGenAlgorithm,
    MessageType,
    MipDecodeError,
    MipValueError,
    NaiExtension,
    RegistrationReply,
    RegistrationRequest,
    decode_message_spans,
    encode_extensions,
    encode_message,
)

#: RFC 4721 section 8: the reserved SPI of the RADIUS-style (CHAP) MN-AAA authenticator.
CHAP_SPI = 2
#: SPIs 0-255 are reserved (RFC 5944 section 1.6): an agent allocates none for
#: an MSA, and a node takes none an agent names for one.
FIRST_ALLOCATED_SPI = 256
#: HMAC-MD5 output (RFC 2104): the authenticator length under the default algorithm.
AUTHENTICATOR_LENGTH = 16
#: The default algorithm of a security association (RFC 5944 section 3.5.1).
DEFAULT_ALGORITHM = KeyGenAlgorithm.HMAC_MD5
#: Per algorithm: the hash HMAC (RFC 2104) runs over, and the authenticator's
#: octets (the whole HMAC output, never truncated).
AUTHENTICATORS: Mapping[int, tuple[str, int]] = {
    KeyGenAlgorithm.HMAC_MD5: ("md5", 16),
    KeyGenAlgorithm.HMAC_SHA1: ("sha1", 20),
}
#: The algorithms an MSA the home AAA makes may name (MIP-Algorithm-Type,
#: RFC 4004 section 9.8, and the Algorithm Identifier of a Key Generation
#: Nonce Reply, taken as the same number): the IANA registry defines only 2,
#: HMAC-SHA-1. Any other value makes the MSA unusable (:func:`msa_algorithm`).
MSA_ALGORITHMS = frozenset({KeyGenAlgorithm.HMAC_SHA1})
#: RFC 4721 section 8: the CHAP form uses the least-significant 237 octets of the challenge.
CHAP_CHALLENGE_TAIL = 237

_AUTH_HEADER = struct.Struct("!BBI")
_GEN_AUTH_HEADER = struct.Struct("!BBHI")


def hmac_md5(key: Secret, data: bytes) -> bytes:
    """The default Mobile IP authenticator (RFC 5944 section 3.5.1, RFC 4721 section 6)."""
    return hmac.digest(key.value, data, "md5")


def _authenticator(algorithm: KeyGenAlgorithm | int) -> tuple[str, int]:
    """``algorithm``'s entry of :data:`AUTHENTICATORS`; :class:`MipValueError`
    if this module does not compute it."""
    known = AUTHENTICATORS.get(int(algorithm))
    if known is None:
        raise MipValueError(f"authentication algorithm {int(algorithm)} is not one this implementation computes")
    return known


def authenticator_length(algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM) -> int:
    """The octets of an authenticator under ``algorithm``;
    :class:`MipValueError` if this module does not compute it."""
    return _authenticator(algorithm)[1]


def mip_authenticator(key: Secret, data: bytes, algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM) -> bytes:
    """The authenticator of ``data`` under ``key`` and ``algorithm``
    (HMAC-MD5 by default, 16 octets; HMAC-SHA-1, 20 octets);
    :class:`MipValueError` for an algorithm it does not compute."""
    return hmac.digest(key.value, data, _authenticator(algorithm)[0])


def msa_algorithm(value: int) -> KeyGenAlgorithm | None:
    """The algorithm an MSA from the home AAA names (MIP-Algorithm-Type or a
    Key Generation Nonce Reply's Algorithm Identifier), or None if it is not
    one of :data:`MSA_ALGORITHMS` (the receiver then refuses the MSA)."""
    return KeyGenAlgorithm(value) if value in MSA_ALGORITHMS else None


def derive_aaa_key(aaa_key: Secret, nonce: bytes, identifier: bytes) -> Secret:
    """RFC 3957 section 5: the key of a new MSA of the mobile node,
    ``HMAC-SHA1(AAA-key, Key Generation Nonce || Mobile Node identifier)``
    (20 octets), where AAA-key is the node's key with its home AAA (here its
    MN-AAA secret)."""
    return Secret(hmac.digest(aaa_key.value, bytes(nonce) + bytes(identifier), "sha1"))


def mn_identifier(request: RegistrationRequest) -> bytes:
    """RFC 3957 section 5: the mobile node identifier a key is derived with:
    the NAI (RFC 2794) if the request carries one, else the home address."""
    nai = next((e.nai for e in request.extensions if isinstance(e, NaiExtension)), None)
    return nai.encode("utf-8") if nai is not None else request.home_address.packed


def chap_authenticator(challenge: bytes, covered: bytes, key: Secret) -> bytes:
    """The MN-AAA authenticator for :data:`CHAP_SPI` (RFC 4721 section 8).

    ``covered`` is the message up to and including the MN-AAA extension's
    Type, Subtype, Length and SPI; ``challenge`` the MN-FA challenge value.
    Equals the CHAP response :func:`aaa_vpn.roles.home_plan.verify_mn_aaa_chap`
    checks (CHAP-Password without its first octet)."""
    if not challenge:
        raise MipValueError("the CHAP MN-AAA authenticator needs an MN-FA challenge (RFC 4721 section 8)")
    inner = hashlib.md5(covered).digest()
    return hashlib.md5(challenge[:1] + key.value + inner + challenge[-CHAP_CHALLENGE_TAIL:]).digest()


# --------------------------------------------------------------------------------------------
# Finding an authentication extension in a received message


AuthExtension = AuthenticationExtension | GeneralizedAuthExtension


@dataclass(frozen=True)
class AuthenticationSite:
    """An authentication extension found in an encoded message.

    ``covered`` is exactly what its authenticator covers: the message from
    octet 0 up to and including the extension's SPI (RFC 5944 section 3.5.1,
    RFC 4721 section 6). ``start``/``end`` locate the extension."""

    extension: AuthExtension
    covered: bytes
    start: int
    end: int
    #: The MN-FA challenge extensions before this extension, nearest last.
    challenges: tuple[bytes, ...] = ()


def _matches(extension: Extension, extension_type: ExtensionType, subtype: int | None) -> bool:
    if extension_type == ExtensionType.GENERALIZED_AUTH:
        return isinstance(extension, GeneralizedAuthExtension) and (subtype is None or extension.subtype == subtype)
    return isinstance(extension, AuthenticationExtension) and extension.type == extension_type


def _site(data: bytes, spans: Sequence[ExtensionSpan], index: int) -> AuthenticationSite:
    span = spans[index]
    extension = span.extension
    assert isinstance(extension, (AuthenticationExtension, GeneralizedAuthExtension))
    header = GENERALIZED_AUTH_HEADER_LENGTH if isinstance(extension, GeneralizedAuthExtension) else AUTH_HEADER_LENGTH
    challenges = tuple(s.extension.challenge for s in spans[:index] if isinstance(s.extension, ChallengeExtension))
    return AuthenticationSite(extension, data[: span.start + header], span.start, span.end, challenges)


def _last_only(extension_type: ExtensionType, subtype: int | None) -> bool:
    # MN-FA and FA-HA authentication close the message (RFC 5944 sections
    # 3.6.1.3, 3.7.2.2, 3.8.3.3), and so does aaa_vpn's binding authentication:
    # only the last extension counts, so an earlier one of the same type (put
    # there by the mobile node, say) can never stand in for the agent's.
    return extension_type in (ExtensionType.MN_FA_AUTH, ExtensionType.FA_HA_AUTH) or (
        extension_type == ExtensionType.GENERALIZED_AUTH and subtype == GeneralizedAuthSubtype.BINDING
    )


def find_authentication(
    message: bytes, extension_type: ExtensionType, subtype: int | None = None
) -> AuthenticationSite | None:
    """The authentication extension of ``extension_type`` (and, for the
    generalized extension, ``subtype``) in an encoded message, or None.

    MN-HA and MN-AAA: the first one. MN-FA, FA-HA and binding authentication:
    the last extension of the message, or None if the last is something else.
    Raises :class:`MipDecodeError` if the message does not decode."""
    data = bytes(message)
    _, spans = decode_message_spans(data)
    if _last_only(extension_type, subtype):
        if spans and _matches(spans[-1].extension, extension_type, subtype):
            return _site(data, spans, len(spans) - 1)
        return None
    for index, span in enumerate(spans):
        if _matches(span.extension, extension_type, subtype):
            return _site(data, spans, index)
    return None


def expected_authenticator(
    site: AuthenticationSite, key: Secret, algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM
) -> bytes:
    """What the authenticator at ``site`` should be under ``key`` (and, but
    for the CHAP MN-AAA form, ``algorithm``)."""
    extension = site.extension
    if (
        isinstance(extension, GeneralizedAuthExtension)
        and extension.subtype == GeneralizedAuthSubtype.MN_AAA
        and extension.spi == CHAP_SPI
    ):
        if not site.challenges:
            raise MipDecodeError("CHAP MN-AAA authentication without a preceding MN-FA challenge", site.start)
        return chap_authenticator(site.challenges[-1], site.covered, key)
    return mip_authenticator(key, site.covered, algorithm)


def verify_authentication(
    message: bytes,
    extension_type: ExtensionType,
    key: Secret,
    *,
    subtype: int | None = None,
    spi: int | None = None,
    algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM,
) -> bool:
    """Whether the ``extension_type`` extension of ``message`` (which one:
    :func:`find_authentication`) carries the right authenticator under ``key``
    and ``algorithm`` (and, if given, the SPI ``spi``).

    False if the extension is missing or wrong -- an authenticator whose
    length is not the algorithm's included, and so is any algorithm this
    module does not compute; :class:`MipDecodeError` if the message does not
    decode at all. The comparison is constant-time."""
    site = find_authentication(message, extension_type, subtype)
    if site is None or (spi is not None and site.extension.spi != spi):
        return False
    try:
        expected = expected_authenticator(site, key, algorithm)
    except (MipDecodeError, MipValueError):
        return False
    authenticator = site.extension.authenticator
    return len(authenticator) == len(expected) and hmac.compare_digest(expected, authenticator)


# --------------------------------------------------------------------------------------------
# Appending an authentication extension to a message being built


def append_authentication(
    message: bytes,
    extension_type: ExtensionType,
    spi: int,
    key: Secret,
    algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM,
) -> bytes:
    """``message`` followed by an MN-HA, MN-FA or FA-HA extension whose
    authenticator -- HMAC-MD5 (16 octets) unless ``algorithm`` says otherwise
    (HMAC-SHA-1: 20) -- covers ``message`` and the new Type, Length and SPI."""
    if extension_type not in (ExtensionType.MN_HA_AUTH, ExtensionType.MN_FA_AUTH, ExtensionType.FA_HA_AUTH):
        raise MipValueError(f"extension type {extension_type!r} is not 32, 33 or 34")
    if not 0 <= spi <= 0xFFFFFFFF:
        raise MipValueError(f"SPI {spi} is not a 32-bit value")
    covered = bytes(message) + _AUTH_HEADER.pack(extension_type, 4 + authenticator_length(algorithm), spi)
    return covered + mip_authenticator(key, covered, algorithm)


def append_generalized_authentication(
    message: bytes,
    subtype: GeneralizedAuthSubtype | int,
    spi: int,
    key: Secret,
    *,
    challenge: bytes | None = None,
) -> bytes:
    """``message`` followed by a generalized authentication extension (RFC 4721
    section 5). HMAC-MD5 (section 6) unless it is MN-AAA with :data:`CHAP_SPI`,
    which takes the RADIUS-style form of section 8 over ``challenge`` (by
    default the last MN-FA challenge extension already in ``message``)."""
    if not 0 <= subtype <= 0xFF or not 0 <= spi <= 0xFFFFFFFF:
        raise MipValueError(f"subtype {subtype} / SPI {spi} out of range")
    covered = bytes(message) + _GEN_AUTH_HEADER.pack(
        ExtensionType.GENERALIZED_AUTH, subtype, 4 + AUTHENTICATOR_LENGTH, spi
    )
    if subtype == GeneralizedAuthSubtype.MN_AAA and spi == CHAP_SPI:
        if challenge is None:
            _, spans = decode_message_spans(bytes(message))
            found = [s.extension.challenge for s in spans if isinstance(s.extension, ChallengeExtension)]
            if not found:
                raise MipValueError("CHAP MN-AAA authentication needs an MN-FA challenge extension before it")
            challenge = found[-1]
        return covered + chap_authenticator(challenge, covered, key)
    return covered + hmac_md5(key, covered)


# --------------------------------------------------------------------------------------------
# The MN-AAA proof an FA forwards to AAA


@dataclass(frozen=True)
class MnAaaProof:
    """The MN-AAA authentication of a Registration Request, as a foreign agent
    forwards it to the home AAA (docs/mn-aaa-chap.md).

    ``preceding`` is the request up to and including the MN-AAA extension's
    Type, Subtype, Length and SPI (RFC 4721 section 6): the argument
    :func:`aaa_vpn.roles.home_plan.mn_aaa_chap_attributes` takes."""

    spi: int
    authenticator: bytes
    challenge: bytes | None  # the MN-FA challenge before it, if any
    preceding: bytes

    def chap_attributes(self) -> tuple[bytes, bytes]:
        """(CHAP-Password, CHAP-Challenge) for the Access-Request (3GPP2 manner):
        ``Challenge[0] || authenticator`` and ``MD5(preceding) || Challenge[-237:]``."""
        if self.spi != CHAP_SPI:
            raise MipValueError(f"MN-AAA SPI {self.spi}: only CHAP_SPI ({CHAP_SPI}) maps to RADIUS CHAP")
        if not self.challenge:
            raise MipValueError("no MN-FA challenge precedes the MN-AAA extension")
        chap_password = self.challenge[:1] + self.authenticator
        chap_challenge = hashlib.md5(self.preceding).digest() + self.challenge[-CHAP_CHALLENGE_TAIL:]
        return chap_password, chap_challenge


def _as_bytes(message: bytes | RegistrationRequest) -> bytes:
    # Decoding is lossless, so a decoded request re-encodes to the bytes received.
    return encode_message(message) if isinstance(message, RegistrationRequest) else bytes(message)


def mn_aaa_proof(message: bytes | RegistrationRequest) -> MnAaaProof:
    """The MN-AAA proof of a Registration Request; :class:`MipDecodeError` if it has none."""
    data = _as_bytes(message)
    if not data or data[0] != MessageType.REGISTRATION_REQUEST:
        raise MipDecodeError("not a Registration Request", 0)
    site = find_authentication(data, ExtensionType.GENERALIZED_AUTH, GeneralizedAuthSubtype.MN_AAA)
    if site is None:
        raise MipDecodeError("the Registration Request has no MN-AAA authentication extension")
    challenge = site.challenges[-1] if site.challenges else None
    return MnAaaProof(site.extension.spi, site.extension.authenticator, challenge, site.covered)


def mn_aaa_preceding(message: bytes | RegistrationRequest) -> bytes:
    """The ``preceding`` bytes of the request's MN-AAA extension (RFC 4721 section 6)."""
    return mn_aaa_proof(message).preceding


# --------------------------------------------------------------------------------------------
# Foreign agent relaying (RFC 5944 sections 3.7.2.2 and 3.7.3.2)


def _is_authorization_enabling(extension: Extension, request: bool) -> bool:
    if isinstance(extension, AuthenticationExtension):
        return extension.type == ExtensionType.MN_HA_AUTH
    # RFC 4721 section 6 / 3GPP2: a home agent that checks the mobile node through
    # AAA takes the MN-AAA extension as authorization-enabling, so it (and the
    # challenge before it) must reach the HA. A reply never carries MN-AAA.
    return (
        request
        and isinstance(extension, GeneralizedAuthExtension)
        and extension.subtype == GeneralizedAuthSubtype.MN_AAA
    )


def _cut(data: bytes, spans: Sequence[ExtensionSpan], request: bool) -> bytes:
    end = None
    for span in spans:
        if _is_authorization_enabling(span.extension, request):
            end = span.end
    if end is None:
        what = "MN-HA or MN-AAA" if request else "MN-HA"
        raise MipDecodeError(f"no authorization-enabling ({what}) extension (RFC 5944 section 3.5.2)")
    return data[:end]


def relay_request(
    message: bytes,
    *,
    extensions: Sequence[Extension] = (),
    fa_ha_spi: int | None = None,
    fa_ha_key: Secret | None = None,
) -> bytes:
    """The Registration Request an FA sends on to the home agent.

    RFC 5944 section 3.7.2.2: everything from the fixed part through the last
    authorization-enabling extension (MN-HA, or MN-AAA) is kept byte for byte;
    whatever follows (MN-FA authentication, extensions meant for the FA) is
    removed; the FA's own ``extensions`` are appended, then FA-HA authentication
    if an FA-HA security association exists -- except on a deregistration
    (Lifetime 0), to which FA-HA authentication is not applied (section 3.5.4)."""
    data = bytes(message)
    decoded, spans = decode_message_spans(data)
    if not isinstance(decoded, RegistrationRequest):
        raise MipDecodeError("not a Registration Request", 0)
    relayed = _cut(data, spans, request=True) + encode_extensions(extensions)
    if (fa_ha_spi is None) != (fa_ha_key is None):
        raise MipValueError("give both fa_ha_spi and fa_ha_key, or neither")
    if fa_ha_spi is not None and fa_ha_key is not None and decoded.lifetime != 0:
        relayed = append_authentication(relayed, ExtensionType.FA_HA_AUTH, fa_ha_spi, fa_ha_key)
    return relayed


def relay_reply(
    message: bytes,
    *,
    extensions: Sequence[Extension] = (),
    mn_fa_spi: int | None = None,
    mn_fa_key: Secret | None = None,
    mn_fa_algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM,
) -> bytes:
    """The Registration Reply an FA sends on to the mobile node.

    RFC 5944 section 3.7.3.2: the fixed part through the MN-HA extension is kept
    byte for byte, what follows (extensions for the FA, FA-HA authentication) is
    removed, the FA's ``extensions`` and MN-FA authentication (if an MN-FA
    security association exists, under its ``mn_fa_algorithm``) are appended."""
    data = bytes(message)
    decoded, spans = decode_message_spans(data)
    if not isinstance(decoded, RegistrationReply):
        raise MipDecodeError("not a Registration Reply", 0)
    relayed = _cut(data, spans, request=False) + encode_extensions(extensions)
    if (mn_fa_spi is None) != (mn_fa_key is None):
        raise MipValueError("give both mn_fa_spi and mn_fa_key, or neither")
    if mn_fa_spi is not None and mn_fa_key is not None:
        relayed = append_authentication(relayed, ExtensionType.MN_FA_AUTH, mn_fa_spi, mn_fa_key, mn_fa_algorithm)
    return relayed
