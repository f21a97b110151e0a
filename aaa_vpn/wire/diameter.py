"""Diameter messages and AVPs (RFC 6733 sections 3 and 4): bytes <-> typed values,
and the dictionary of the base protocol and the Mobile IPv4 application (RFC 4004).

What is here:

* :class:`Message`: the 20-octet header (RFC 6733 section 3: Version 1, a
  24-bit Message Length, the R/P/E/T flags, a 24-bit Command Code, the
  Application-ID, the Hop-by-Hop and End-to-End Identifiers) and its AVPs.
* :class:`Avp` (section 4.1): Code, the V/M/P flags, the Vendor-ID present
  exactly when V is set, and the raw value. The codec keeps every AVP it
  does not know, raw and in order, so ``encode(decode(b)) == b`` for every
  ``b`` that decodes and whose padding octets are zero (section 4.1: "padding
  ... MUST be set to zero"; a receiver ignores them), and
  ``decode(encode(x)) == x`` always.
* Grouped AVPs (section 4.4) are read with :func:`decode_avps` on the value
  of the group, with the same bounded reader: an inner AVP cannot run past
  its group.
* Value types (section 4.2/4.3): Unsigned32/64, Integer32, Address (with its
  two-octet family), UTF8String, DiameterIdentity; ``avp_*`` build, the
  ``Avp.as_*`` methods read, each raising :class:`DiameterDecodeError` with
  the Result-Code a receiver answers (5014 DIAMETER_INVALID_AVP_LENGTH, 5004
  DIAMETER_INVALID_AVP_VALUE).
* The dictionary (:data:`AVPS`, :data:`COMMANDS`, :class:`ResultCode`): base
  protocol AVPs and commands (RFC 6733 sections 4.5 and 3.1), the NASREQ AVPs
  RFC 4004 uses (RFC 7155), and the RFC 4004 commands (section 5: AMR/AMA
  260, HAR/HAA 262), AVPs (section 7: codes 318-348, 367) and result codes
  (section 6). The numbers were checked against the IANA AAA registry and
  the RFC 4004 dictionary Wireshark ships (``diameter/mobileipv4.xml``).
  RFC 4004 names an MIP-MN-HA-SPI inside MIP-MN-to-HA-MSA without assigning
  it a code; the code used is RFC 5778's (491), as Wireshark's dictionary does.
* The mobility security associations of RFC 4004 section 9 (:class:`Msa`,
  :func:`encode_msa`, :func:`decode_msa`): MIP-FA-to-HA-MSA and
  MIP-HA-to-FA-MSA, the key the home AAA gives an agent for its MSA with the
  mobile node (MIP-FA-to-MN-MSA, MIP-HA-to-MN-MSA) and the nonce it is
  derived from, for the node (MIP-MN-to-FA-MSA, MIP-MN-to-HA-MSA; RFC 3957).
  RFC 4004 names SPIs inside them that it gives no code (MIP-MN-FA-SPI,
  MIP-HA-to-MN-SPI); as Wireshark's dictionary does, MIP-MN-to-FA-MSA carries
  MIP-MN-AAA-SPI (the AAA SPI the key is derived under) and the MN-HA pair
  MIP-MN-HA-SPI (one SPI names the MSA in both directions here).
* The M-bit rule (section 4.1): :func:`unknown_mandatory` finds the first AVP
  with the M bit set that the receiving application does not know, which is
  answered with 5001 DIAMETER_AVP_UNSUPPORTED and a Failed-AVP holding it.

Rules (what is refused, with the Result-Code an answer would carry):

* A message shorter than its header, with a Version other than 1 (5011
  DIAMETER_UNSUPPORTED_VERSION), a Message Length that is not a multiple of
  4, below 20, or other than the octets given (5015
  DIAMETER_INVALID_MESSAGE_LENGTH), reserved header bits set, or E set on a
  request (3008 DIAMETER_INVALID_HDR_BITS), does not decode.
* An AVP whose Length is below its header (8, or 12 with V) or runs past the
  message or its group (5014 DIAMETER_INVALID_AVP_LENGTH) does not decode.
  The AVP flags' five reserved bits are ignored on receipt and kept.

``decode_*`` raises only :class:`DiameterDecodeError` (the peer's fault, with
``result_code`` and, where one AVP is to blame, ``failed_avp``); a value that
cannot be built raises :class:`DiameterValueError` (the caller's fault).

Pure: no sockets, no clock, no randomness.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from aaa_vpn.wire.reader import DecodeError, Reader

#: RFC 6733 section 2.1: the Diameter port over TCP and SCTP (3868; TLS/TCP 5658).
DIAMETER_PORT = 3868
DIAMETER_TLS_PORT = 5658
VERSION = 1
HEADER_LENGTH = 20
#: The largest message this codec accepts (the 24-bit field allows 16 MiB;
#: nothing in the Mobile IPv4 application comes near 64 KiB).
MAX_MESSAGE_LENGTH = 65536
_U24_MAX = 0xFFFFFF
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF

# Header flags (section 3).
FLAG_REQUEST = 0x80
FLAG_PROXIABLE = 0x40
FLAG_ERROR = 0x20
FLAG_RETRANSMIT = 0x10
_HEADER_RESERVED = 0x0F
# AVP flags (section 4.1).
AVP_VENDOR = 0x80
AVP_MANDATORY = 0x40
AVP_PROTECTED = 0x20

#: RFC 6733 section 2.4 / RFC 4004 section 1: application identifiers.
BASE_APPLICATION = 0
MOBILE_IPV4_APPLICATION = 2
RELAY_APPLICATION = 0xFFFFFFFF


class DiameterDecodeError(DecodeError):
    """Bytes received from a peer are not a valid Diameter message (the peer's fault).

    ``result_code`` is what an answer to it carries; ``failed_avp`` the raw
    AVP to blame (for a Failed-AVP), if one is."""

    def __init__(
        self, message: str, offset: int | None = None, result_code: int = 5014, failed_avp: bytes = b""
    ) -> None:
        super().__init__(message, offset)
        self.result_code = result_code
        self.failed_avp = failed_avp


class DiameterValueError(ValueError):
    """A message or AVP that cannot exist was asked for (the caller's fault)."""


class Command(enum.IntEnum):
    """Command codes: RFC 6733 section 3.1, RFC 4004 section 5."""

    AA_MOBILE_NODE = 260  # AMR / AMA
    HOME_AGENT_MIP = 262  # HAR / HAA
    CAPABILITIES_EXCHANGE = 257  # CER / CEA
    RE_AUTH = 258  # RAR / RAA
    ACCOUNTING = 271  # ACR / ACA
    ABORT_SESSION = 274  # ASR / ASA
    SESSION_TERMINATION = 275  # STR / STA
    DEVICE_WATCHDOG = 280  # DWR / DWA
    DISCONNECT_PEER = 282  # DPR / DPA


#: Short names of requests and answers, for logs: (code, is_request) -> name.
COMMAND_NAMES: dict[tuple[int, bool], str] = {
    (Command.AA_MOBILE_NODE, True): "AMR",
    (Command.AA_MOBILE_NODE, False): "AMA",
    (Command.HOME_AGENT_MIP, True): "HAR",
    (Command.HOME_AGENT_MIP, False): "HAA",
    (Command.CAPABILITIES_EXCHANGE, True): "CER",
    (Command.CAPABILITIES_EXCHANGE, False): "CEA",
    (Command.RE_AUTH, True): "RAR",
    (Command.RE_AUTH, False): "RAA",
    (Command.ACCOUNTING, True): "ACR",
    (Command.ACCOUNTING, False): "ACA",
    (Command.ABORT_SESSION, True): "ASR",
    (Command.ABORT_SESSION, False): "ASA",
    (Command.SESSION_TERMINATION, True): "STR",
    (Command.SESSION_TERMINATION, False): "STA",
    (Command.DEVICE_WATCHDOG, True): "DWR",
    (Command.DEVICE_WATCHDOG, False): "DWA",
    (Command.DISCONNECT_PEER, True): "DPR",
    (Command.DISCONNECT_PEER, False): "DPA",
}


class ResultCode(enum.IntEnum):
    """Result-Code values (RFC 6733 section 7.1, RFC 4004 section 6)."""

    SUCCESS = 2001
    LIMITED_SUCCESS = 2002
    COMMAND_UNSUPPORTED = 3001
    UNABLE_TO_DELIVER = 3002
    REALM_NOT_SERVED = 3003
    TOO_BUSY = 3004
    LOOP_DETECTED = 3005
    APPLICATION_UNSUPPORTED = 3007
    INVALID_HDR_BITS = 3008
    INVALID_AVP_BITS = 3009
    UNKNOWN_PEER = 3010
    AUTHENTICATION_REJECTED = 4001
    ELECTION_LOST = 4003
    # RFC 4004 section 6.1 (transient)
    MIP_REPLY_FAILURE = 4005
    HA_NOT_AVAILABLE = 4006
    BAD_KEY = 4007
    MIP_FILTER_NOT_SUPPORTED = 4008
    AVP_UNSUPPORTED = 5001
    UNKNOWN_SESSION_ID = 5002
    AUTHORIZATION_REJECTED = 5003
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    RESOURCES_EXCEEDED = 5006
    CONTRADICTING_AVPS = 5007
    AVP_NOT_ALLOWED = 5008
    AVP_OCCURS_TOO_MANY_TIMES = 5009
    NO_COMMON_APPLICATION = 5010
    UNSUPPORTED_VERSION = 5011
    UNABLE_TO_COMPLY = 5012
    INVALID_BIT_IN_HEADER = 5013
    INVALID_AVP_LENGTH = 5014
    INVALID_MESSAGE_LENGTH = 5015
    INVALID_AVP_BIT_COMBO = 5016
    NO_COMMON_SECURITY = 5017
    # RFC 4004 section 6.2 (permanent)
    NO_FOREIGN_HA_SERVICE = 5024
    END_TO_END_MIP_KEY_ENCRYPTION = 5025


class AvpType(enum.Enum):
    """RFC 6733 sections 4.2 and 4.3."""

    OCTETS = "OctetString"
    UTF8 = "UTF8String"
    IDENTITY = "DiameterIdentity"
    U32 = "Unsigned32"
    U64 = "Unsigned64"
    I32 = "Integer32"
    ENUM = "Enumerated"
    ADDRESS = "Address"
    TIME = "Time"
    GROUPED = "Grouped"


@dataclass(frozen=True)
class AvpDef:
    """One dictionary entry."""

    name: str
    code: int
    type: AvpType
    vendor: int = 0
    mandatory: bool = True
    """Whether senders set the M bit (the RFCs' "MUST")."""


class AvpCode(enum.IntEnum):
    """AVP codes of the IETF space (vendor 0) used here."""

    USER_NAME = 1
    CLASS = 25
    SESSION_TIMEOUT = 27
    PROXY_STATE = 33
    ACCT_SESSION_ID = 44
    ACCT_MULTI_SESSION_ID = 50
    EVENT_TIMESTAMP = 55
    ACCT_INTERIM_INTERVAL = 85
    HOST_IP_ADDRESS = 257
    AUTH_APPLICATION_ID = 258
    ACCT_APPLICATION_ID = 259
    VENDOR_SPECIFIC_APPLICATION_ID = 260
    REDIRECT_HOST_USAGE = 261
    REDIRECT_MAX_CACHE_TIME = 262
    SESSION_ID = 263
    ORIGIN_HOST = 264
    SUPPORTED_VENDOR_ID = 265
    VENDOR_ID = 266
    FIRMWARE_REVISION = 267
    RESULT_CODE = 268
    PRODUCT_NAME = 269
    DISCONNECT_CAUSE = 273
    AUTH_REQUEST_TYPE = 274
    AUTH_GRACE_PERIOD = 276
    AUTH_SESSION_STATE = 277
    ORIGIN_STATE_ID = 278
    FAILED_AVP = 279
    PROXY_HOST = 280
    ERROR_MESSAGE = 281
    ROUTE_RECORD = 282
    DESTINATION_REALM = 283
    PROXY_INFO = 284
    RE_AUTH_REQUEST_TYPE = 285
    AUTHORIZATION_LIFETIME = 291
    REDIRECT_HOST = 292
    DESTINATION_HOST = 293
    ERROR_REPORTING_HOST = 294
    TERMINATION_CAUSE = 295
    ORIGIN_REALM = 296
    EXPERIMENTAL_RESULT = 297
    EXPERIMENTAL_RESULT_CODE = 298
    INBAND_SECURITY_ID = 299
    # RFC 4004 section 7
    MIP_FA_TO_HA_SPI = 318
    MIP_FA_TO_MN_SPI = 319
    MIP_REG_REQUEST = 320
    MIP_REG_REPLY = 321
    MIP_MN_AAA_AUTH = 322
    MIP_HA_TO_FA_SPI = 323
    MIP_MN_TO_FA_MSA = 325
    MIP_FA_TO_MN_MSA = 326
    MIP_FA_TO_HA_MSA = 328
    MIP_HA_TO_FA_MSA = 329
    MIP_MN_TO_HA_MSA = 331
    MIP_HA_TO_MN_MSA = 332
    MIP_MOBILE_NODE_ADDRESS = 333
    MIP_HOME_AGENT_ADDRESS = 334
    MIP_NONCE = 335
    MIP_CANDIDATE_HOME_AGENT_HOST = 336
    MIP_FEATURE_VECTOR = 337
    MIP_AUTH_INPUT_DATA_LENGTH = 338
    MIP_AUTHENTICATOR_LENGTH = 339
    MIP_AUTHENTICATOR_OFFSET = 340
    MIP_MN_AAA_SPI = 341
    MIP_FILTER_RULE = 342
    MIP_SESSION_KEY = 343
    MIP_FA_CHALLENGE = 344
    MIP_ALGORITHM_TYPE = 345
    MIP_REPLAY_MODE = 346
    MIP_ORIGINATING_FOREIGN_AAA = 347
    MIP_HOME_AGENT_HOST = 348
    MIP_MSA_LIFETIME = 367
    MIP_MN_HA_SPI = 491  # RFC 5778 section 6.3 (see the module docstring)


A = AvpCode
_T = AvpType
_DEFS: tuple[AvpDef, ...] = (
    AvpDef("User-Name", A.USER_NAME, _T.UTF8),
    AvpDef("Class", A.CLASS, _T.OCTETS),
    AvpDef("Session-Timeout", A.SESSION_TIMEOUT, _T.U32),
    AvpDef("Proxy-State", A.PROXY_STATE, _T.OCTETS),
    AvpDef("Acct-Session-Id", A.ACCT_SESSION_ID, _T.OCTETS),
    AvpDef("Acct-Multi-Session-Id", A.ACCT_MULTI_SESSION_ID, _T.UTF8),
    AvpDef("Event-Timestamp", A.EVENT_TIMESTAMP, _T.TIME),
    AvpDef("Acct-Interim-Interval", A.ACCT_INTERIM_INTERVAL, _T.U32),
    AvpDef("Host-IP-Address", A.HOST_IP_ADDRESS, _T.ADDRESS),
    AvpDef("Auth-Application-Id", A.AUTH_APPLICATION_ID, _T.U32),
    AvpDef("Acct-Application-Id", A.ACCT_APPLICATION_ID, _T.U32),
    AvpDef("Vendor-Specific-Application-Id", A.VENDOR_SPECIFIC_APPLICATION_ID, _T.GROUPED),
    AvpDef("Redirect-Host-Usage", A.REDIRECT_HOST_USAGE, _T.ENUM),
    AvpDef("Redirect-Max-Cache-Time", A.REDIRECT_MAX_CACHE_TIME, _T.U32),
    AvpDef("Session-Id", A.SESSION_ID, _T.UTF8),
    AvpDef("Origin-Host", A.ORIGIN_HOST, _T.IDENTITY),
    AvpDef("Supported-Vendor-Id", A.SUPPORTED_VENDOR_ID, _T.U32),
    AvpDef("Vendor-Id", A.VENDOR_ID, _T.U32),
    AvpDef("Firmware-Revision", A.FIRMWARE_REVISION, _T.U32, mandatory=False),
    AvpDef("Result-Code", A.RESULT_CODE, _T.U32),
    AvpDef("Product-Name", A.PRODUCT_NAME, _T.UTF8, mandatory=False),
    AvpDef("Disconnect-Cause", A.DISCONNECT_CAUSE, _T.ENUM),
    AvpDef("Auth-Request-Type", A.AUTH_REQUEST_TYPE, _T.ENUM),
    AvpDef("Auth-Grace-Period", A.AUTH_GRACE_PERIOD, _T.U32),
    AvpDef("Auth-Session-State", A.AUTH_SESSION_STATE, _T.ENUM),
    AvpDef("Origin-State-Id", A.ORIGIN_STATE_ID, _T.U32),
    AvpDef("Failed-AVP", A.FAILED_AVP, _T.GROUPED),
    AvpDef("Proxy-Host", A.PROXY_HOST, _T.IDENTITY),
    AvpDef("Error-Message", A.ERROR_MESSAGE, _T.UTF8, mandatory=False),
    AvpDef("Route-Record", A.ROUTE_RECORD, _T.IDENTITY),
    AvpDef("Destination-Realm", A.DESTINATION_REALM, _T.IDENTITY),
    AvpDef("Proxy-Info", A.PROXY_INFO, _T.GROUPED),
    AvpDef("Re-Auth-Request-Type", A.RE_AUTH_REQUEST_TYPE, _T.ENUM),
    AvpDef("Authorization-Lifetime", A.AUTHORIZATION_LIFETIME, _T.U32),
    AvpDef("Redirect-Host", A.REDIRECT_HOST, _T.OCTETS),
    AvpDef("Destination-Host", A.DESTINATION_HOST, _T.IDENTITY),
    AvpDef("Error-Reporting-Host", A.ERROR_REPORTING_HOST, _T.IDENTITY, mandatory=False),
    AvpDef("Termination-Cause", A.TERMINATION_CAUSE, _T.ENUM),
    AvpDef("Origin-Realm", A.ORIGIN_REALM, _T.IDENTITY),
    AvpDef("Experimental-Result", A.EXPERIMENTAL_RESULT, _T.GROUPED),
    AvpDef("Experimental-Result-Code", A.EXPERIMENTAL_RESULT_CODE, _T.U32),
    AvpDef("Inband-Security-Id", A.INBAND_SECURITY_ID, _T.U32),
    AvpDef("MIP-FA-to-HA-SPI", A.MIP_FA_TO_HA_SPI, _T.U32),
    AvpDef("MIP-FA-to-MN-SPI", A.MIP_FA_TO_MN_SPI, _T.U32),
    AvpDef("MIP-Reg-Request", A.MIP_REG_REQUEST, _T.OCTETS),
    AvpDef("MIP-Reg-Reply", A.MIP_REG_REPLY, _T.OCTETS),
    AvpDef("MIP-MN-AAA-Auth", A.MIP_MN_AAA_AUTH, _T.GROUPED),
    AvpDef("MIP-HA-to-FA-SPI", A.MIP_HA_TO_FA_SPI, _T.U32),
    AvpDef("MIP-MN-to-FA-MSA", A.MIP_MN_TO_FA_MSA, _T.GROUPED),
    AvpDef("MIP-FA-to-MN-MSA", A.MIP_FA_TO_MN_MSA, _T.GROUPED),
    AvpDef("MIP-FA-to-HA-MSA", A.MIP_FA_TO_HA_MSA, _T.GROUPED),
    AvpDef("MIP-HA-to-FA-MSA", A.MIP_HA_TO_FA_MSA, _T.GROUPED),
    AvpDef("MIP-MN-to-HA-MSA", A.MIP_MN_TO_HA_MSA, _T.GROUPED),
    AvpDef("MIP-HA-to-MN-MSA", A.MIP_HA_TO_MN_MSA, _T.GROUPED),
    AvpDef("MIP-Mobile-Node-Address", A.MIP_MOBILE_NODE_ADDRESS, _T.ADDRESS),
    AvpDef("MIP-Home-Agent-Address", A.MIP_HOME_AGENT_ADDRESS, _T.ADDRESS),
    AvpDef("MIP-Nonce", A.MIP_NONCE, _T.OCTETS),
    AvpDef("MIP-Candidate-Home-Agent-Host", A.MIP_CANDIDATE_HOME_AGENT_HOST, _T.IDENTITY),
    AvpDef("MIP-Feature-Vector", A.MIP_FEATURE_VECTOR, _T.U32),
    AvpDef("MIP-Auth-Input-Data-Length", A.MIP_AUTH_INPUT_DATA_LENGTH, _T.U32),
    AvpDef("MIP-Authenticator-Length", A.MIP_AUTHENTICATOR_LENGTH, _T.U32),
    AvpDef("MIP-Authenticator-Offset", A.MIP_AUTHENTICATOR_OFFSET, _T.U32),
    AvpDef("MIP-MN-AAA-SPI", A.MIP_MN_AAA_SPI, _T.U32),
    AvpDef("MIP-Filter-Rule", A.MIP_FILTER_RULE, _T.OCTETS),
    AvpDef("MIP-Session-Key", A.MIP_SESSION_KEY, _T.OCTETS),
    AvpDef("MIP-FA-Challenge", A.MIP_FA_CHALLENGE, _T.OCTETS),
    AvpDef("MIP-Algorithm-Type", A.MIP_ALGORITHM_TYPE, _T.ENUM),
    AvpDef("MIP-Replay-Mode", A.MIP_REPLAY_MODE, _T.ENUM),
    AvpDef("MIP-Originating-Foreign-AAA", A.MIP_ORIGINATING_FOREIGN_AAA, _T.GROUPED),
    AvpDef("MIP-Home-Agent-Host", A.MIP_HOME_AGENT_HOST, _T.GROUPED),
    AvpDef("MIP-MSA-Lifetime", A.MIP_MSA_LIFETIME, _T.U32),
    AvpDef("MIP-MN-HA-SPI", A.MIP_MN_HA_SPI, _T.U32),
)
#: The dictionary of the IETF space, by (vendor, code).
AVPS: dict[tuple[int, int], AvpDef] = {(d.vendor, d.code): d for d in _DEFS}

#: RFC 6733 section 5.4.3 Disconnect-Cause; section 8.15 Termination-Cause;
#: section 8.7 Auth-Request-Type; section 8.11 Auth-Session-State.
DISCONNECT_REBOOTING, DISCONNECT_BUSY, DISCONNECT_DO_NOT_WANT_TO_TALK_TO_YOU = 0, 1, 2
TERMINATION_LOGOUT = 1
TERMINATION_ADMINISTRATIVE = 4
AUTHORIZE_ONLY, AUTHENTICATE_ONLY, AUTHORIZE_AUTHENTICATE = 1, 2, 3
STATE_MAINTAINED, NO_STATE_MAINTAINED = 0, 1
#: RFC 4004 section 9.8: MIP-Algorithm-Type 2 is HMAC-SHA-1; section 9.9 MIP-Replay-Mode.
ALGORITHM_HMAC_SHA1 = 2
REPLAY_NONE, REPLAY_TIMESTAMPS, REPLAY_NONCES = 1, 2, 3
#: RFC 4004 section 7.5: MIP-Feature-Vector bits.
FEATURE_HOME_ADDRESS_REQUESTED = 1
FEATURE_HOME_AGENT_REQUESTED = 4
FEATURE_MN_HA_KEY_REQUEST = 16
FEATURE_MN_FA_KEY_REQUEST = 32
FEATURE_FA_HA_KEY_REQUEST = 64

# --------------------------------------------------------------------------------------------
# Values

_AVP_HEADER = struct.Struct("!IBBH")  # code, flags, length (24 bits: high octet + 16)
_HEADER = struct.Struct("!B3sB3sIII")


@dataclass(frozen=True)
class Avp:
    """One AVP (RFC 6733 section 4.1): ``value`` is raw (for a grouped AVP, its
    encoded inner AVPs). ``vendor`` is 0 without the V bit."""

    code: int
    value: bytes = field(default=b"", repr=False)  # may be a key: never in a repr
    vendor: int = 0
    mandatory: bool = False
    protected: bool = False
    reserved: int = 0
    """The five reserved flag bits as received (section 4.1: ignored, kept)."""

    def __post_init__(self) -> None:
        if not 0 <= self.code <= _U32_MAX:
            raise DiameterValueError(f"AVP code {self.code}: expected 0..{_U32_MAX}")
        if not 0 <= self.vendor <= _U32_MAX:
            raise DiameterValueError(f"Vendor-ID {self.vendor}: expected 0..{_U32_MAX}")
        if not 0 <= self.reserved <= 0x1F:
            raise DiameterValueError(f"reserved AVP flags {self.reserved}: expected 0..31")
        if len(self.value) + self.header_length > _U24_MAX:
            raise DiameterValueError(f"AVP {self.code}: a value of {len(self.value)} octets does not fit")

    @property
    def header_length(self) -> int:
        return 12 if self.vendor else 8

    @property
    def flags(self) -> int:
        return (
            (AVP_VENDOR if self.vendor else 0)
            | (AVP_MANDATORY if self.mandatory else 0)
            | (AVP_PROTECTED if self.protected else 0)
            | self.reserved
        )

    @property
    def name(self) -> str:
        d = AVPS.get((self.vendor, self.code))
        return d.name if d is not None else f"AVP {self.vendor}:{self.code}"

    def encode(self) -> bytes:
        return encode_avp(self)

    # -- typed reads (RFC 6733 section 4.2/4.3); errors carry 5014 or 5004 --
    def _fixed(self, size: int) -> bytes:
        if len(self.value) != size:
            raise DiameterDecodeError(
                f"{self.name}: {len(self.value)} octets, expected {size}",
                result_code=ResultCode.INVALID_AVP_LENGTH,
                failed_avp=encode_avp(self),
            )
        return self.value

    def as_u32(self) -> int:
        return int.from_bytes(self._fixed(4), "big")

    def as_u64(self) -> int:
        return int.from_bytes(self._fixed(8), "big")

    def as_i32(self) -> int:
        return int.from_bytes(self._fixed(4), "big", signed=True)

    def as_text(self) -> str:
        try:
            return self.value.decode("utf-8")
        except UnicodeDecodeError:
            raise DiameterDecodeError(
                f"{self.name}: not UTF-8", result_code=ResultCode.INVALID_AVP_VALUE, failed_avp=encode_avp(self)
            ) from None

    def as_address(self) -> IPv4Address | IPv6Address:
        """The Address type: a two-octet IANA family (1 IPv4, 2 IPv6), then the address."""
        v = self.value
        family = int.from_bytes(v[:2], "big") if len(v) >= 2 else -1
        if family == 1 and len(v) == 6:
            return IPv4Address(v[2:])
        if family == 2 and len(v) == 18:
            return IPv6Address(v[2:])
        raise DiameterDecodeError(
            f"{self.name}: {v.hex()} is not an IPv4 or IPv6 Address",
            result_code=ResultCode.INVALID_AVP_VALUE,
            failed_avp=encode_avp(self),
        )

    def as_ipv4(self) -> IPv4Address:
        address = self.as_address()
        if not isinstance(address, IPv4Address):
            raise DiameterDecodeError(
                f"{self.name}: an IPv6 address where IPv4 is needed",
                result_code=ResultCode.INVALID_AVP_VALUE,
                failed_avp=encode_avp(self),
            )
        return address

    def as_grouped(self) -> tuple[Avp, ...]:
        return decode_avps(self.value, what=self.name)


@dataclass(frozen=True)
class Message:
    """A Diameter message (RFC 6733 section 3)."""

    command: int
    request: bool
    application: int = BASE_APPLICATION
    hop_by_hop: int = 0
    end_to_end: int = 0
    avps: tuple[Avp, ...] = ()
    proxiable: bool = False
    error: bool = False
    retransmit: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.command <= _U24_MAX:
            raise DiameterValueError(f"Command Code {self.command}: expected 0..{_U24_MAX}")
        for name in ("application", "hop_by_hop", "end_to_end"):
            value = getattr(self, name)
            if not 0 <= value <= _U32_MAX:
                raise DiameterValueError(f"{name} {value}: expected 0..{_U32_MAX}")
        if self.error and self.request:
            raise DiameterValueError("the E bit is never set on a request (RFC 6733 section 3)")

    @property
    def flags(self) -> int:
        return (
            (FLAG_REQUEST if self.request else 0)
            | (FLAG_PROXIABLE if self.proxiable else 0)
            | (FLAG_ERROR if self.error else 0)
            | (FLAG_RETRANSMIT if self.retransmit else 0)
        )

    @property
    def name(self) -> str:
        kind = "request" if self.request else "answer"
        return COMMAND_NAMES.get((self.command, self.request), f"{kind} {self.command}")

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        """The first AVP of that code, or None."""
        return find_avp(self.avps, code, vendor)

    def find_all(self, code: int, vendor: int = 0) -> list[Avp]:
        return [a for a in self.avps if a.code == code and a.vendor == vendor]

    def text(self, code: int) -> str | None:
        avp = self.find(code)
        return None if avp is None else avp.as_text()

    def u32(self, code: int) -> int | None:
        avp = self.find(code)
        return None if avp is None else avp.as_u32()

    @property
    def session_id(self) -> str | None:
        return self.text(AvpCode.SESSION_ID)

    @property
    def origin_host(self) -> str | None:
        return self.text(AvpCode.ORIGIN_HOST)

    @property
    def origin_realm(self) -> str | None:
        return self.text(AvpCode.ORIGIN_REALM)

    @property
    def result_code(self) -> int | None:
        return self.u32(AvpCode.RESULT_CODE)

    def encode(self) -> bytes:
        return encode_message(self)


def find_avp(avps: Iterable[Avp], code: int, vendor: int = 0) -> Avp | None:
    for avp in avps:
        if avp.code == code and avp.vendor == vendor:
            return avp
    return None


# --------------------------------------------------------------------------------------------
# Building AVPs


def _mandatory(code: int, vendor: int) -> bool:
    d = AVPS.get((vendor, code))
    return True if d is None else d.mandatory


def avp_octets(code: int, value: bytes, vendor: int = 0, mandatory: bool | None = None) -> Avp:
    return Avp(code, bytes(value), vendor, _mandatory(code, vendor) if mandatory is None else mandatory)


def avp_text(code: int, value: str, vendor: int = 0, mandatory: bool | None = None) -> Avp:
    return avp_octets(code, value.encode("utf-8"), vendor, mandatory)


def avp_u32(code: int, value: int, vendor: int = 0, mandatory: bool | None = None) -> Avp:
    if not 0 <= value <= _U32_MAX:
        raise DiameterValueError(f"AVP {code}: {value} does not fit 32 bits")
    return avp_octets(code, value.to_bytes(4, "big"), vendor, mandatory)


def avp_u64(code: int, value: int, vendor: int = 0, mandatory: bool | None = None) -> Avp:
    if not 0 <= value <= _U64_MAX:
        raise DiameterValueError(f"AVP {code}: {value} does not fit 64 bits")
    return avp_octets(code, value.to_bytes(8, "big"), vendor, mandatory)


def avp_address(code: int, value: IPv4Address | IPv6Address, vendor: int = 0, mandatory: bool | None = None) -> Avp:
    family = b"\x00\x01" if isinstance(value, IPv4Address) else b"\x00\x02"
    return avp_octets(code, family + value.packed, vendor, mandatory)


def avp_grouped(code: int, avps: Iterable[Avp], vendor: int = 0, mandatory: bool | None = None) -> Avp:
    return avp_octets(code, encode_avps(avps), vendor, mandatory)


# --------------------------------------------------------------------------------------------
# Encoding


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def encode_avp(avp: Avp) -> bytes:
    """One AVP with its padding (section 4.1: Length excludes it)."""
    length = avp.header_length + len(avp.value)
    head = _AVP_HEADER.pack(avp.code, avp.flags, length >> 16, length & 0xFFFF)
    vendor = avp.vendor.to_bytes(4, "big") if avp.vendor else b""
    return head + vendor + avp.value + b"\x00" * _pad(length)


def encode_avps(avps: Iterable[Avp]) -> bytes:
    return b"".join(encode_avp(a) for a in avps)


def encode_message(message: Message) -> bytes:
    body = encode_avps(message.avps)
    length = HEADER_LENGTH + len(body)
    if length > MAX_MESSAGE_LENGTH:
        raise DiameterValueError(f"{message.name}: {length} octets, at most {MAX_MESSAGE_LENGTH}")
    return (
        _HEADER.pack(
            VERSION,
            length.to_bytes(3, "big"),
            message.flags,
            message.command.to_bytes(3, "big"),
            message.application,
            message.hop_by_hop,
            message.end_to_end,
        )
        + body
    )


# --------------------------------------------------------------------------------------------
# Decoding


def message_length(header: bytes) -> int:
    """The Message Length of a message whose first four octets are ``header``
    (stream framing, RFC 6733 section 3). Raises :class:`DiameterDecodeError`
    for a Version other than 1 or a length a stream cannot be resynchronised
    after (below 20, not a multiple of 4, beyond :data:`MAX_MESSAGE_LENGTH`)."""
    if len(header) < 4:
        raise DiameterDecodeError("a truncated header", 0, ResultCode.INVALID_MESSAGE_LENGTH)
    if header[0] != VERSION:
        raise DiameterDecodeError(f"Version {header[0]}, expected 1", 0, ResultCode.UNSUPPORTED_VERSION)
    length = int.from_bytes(header[1:4], "big")
    if length < HEADER_LENGTH or length % 4 or length > MAX_MESSAGE_LENGTH:
        raise DiameterDecodeError(
            f"Message Length {length}: expected a multiple of 4 in {HEADER_LENGTH}..{MAX_MESSAGE_LENGTH}",
            1,
            ResultCode.INVALID_MESSAGE_LENGTH,
        )
    return length


def _read_avp(reader: Reader, data: bytes, what: str) -> Avp:
    start = reader.position
    if reader.remaining < 8:
        raise DiameterDecodeError(f"{what}: a truncated AVP header", start, ResultCode.INVALID_AVP_LENGTH)
    code = reader.u32("AVP Code")
    flags = reader.u8("AVP Flags")
    length = int.from_bytes(reader.take(3, "AVP Length"), "big")
    header = 12 if flags & AVP_VENDOR else 8
    # The Failed-AVP of a bad length is the header as received (section 7.5).
    if length < header or length - 8 > reader.remaining:
        raise DiameterDecodeError(
            f"{what}: AVP {code} has Length {length}, {reader.remaining + 8} octets are left",
            start,
            ResultCode.INVALID_AVP_LENGTH,
            failed_avp=data[start : start + 8],
        )
    vendor = reader.u32("Vendor-ID") if flags & AVP_VENDOR else 0
    value = reader.take(length - header, f"AVP {code} value")
    padding = min(_pad(length), reader.remaining)
    reader.take(padding, f"AVP {code} padding")
    try:
        return Avp(
            code,
            value,
            vendor,
            bool(flags & AVP_MANDATORY),
            bool(flags & AVP_PROTECTED),
            flags & 0x1F,
        )
    except DiameterValueError as exc:  # pragma: no cover - every field was read within its range
        raise DiameterDecodeError(str(exc), start) from None


def decode_avps(data: bytes, what: str = "AVPs") -> tuple[Avp, ...]:
    """A window of AVPs (a message body or a grouped AVP's value). The last
    AVP's padding may be missing only where the window ends."""
    reader = Reader(data, error=DiameterDecodeError)
    out: list[Avp] = []
    while reader.remaining:
        out.append(_read_avp(reader, data, what))
    return tuple(out)


def decode_message(data: bytes) -> Message:
    """A whole message (see the module rules)."""
    data = bytes(data)
    if len(data) < HEADER_LENGTH:
        raise DiameterDecodeError(
            f"{len(data)} octets, a header is {HEADER_LENGTH}", 0, ResultCode.INVALID_MESSAGE_LENGTH
        )
    length = message_length(data[:4])
    if length != len(data):
        raise DiameterDecodeError(
            f"Message Length {length}, {len(data)} octets given", 1, ResultCode.INVALID_MESSAGE_LENGTH
        )
    _, _, flags, command, application, hop, end = _HEADER.unpack_from(data)
    if flags & _HEADER_RESERVED:
        raise DiameterDecodeError(f"reserved header flags {flags & 0xF:#x} set", 4, ResultCode.INVALID_HDR_BITS)
    request = bool(flags & FLAG_REQUEST)
    if request and flags & FLAG_ERROR:
        raise DiameterDecodeError("the E bit set on a request", 4, ResultCode.INVALID_HDR_BITS)
    reader = Reader(data, HEADER_LENGTH, length, DiameterDecodeError)
    avps: list[Avp] = []
    while reader.remaining:
        avps.append(_read_avp(reader, data, "message"))
    return Message(
        int.from_bytes(command, "big"),
        request,
        application,
        hop,
        end,
        tuple(avps),
        proxiable=bool(flags & FLAG_PROXIABLE),
        error=bool(flags & FLAG_ERROR),
        retransmit=bool(flags & FLAG_RETRANSMIT),
    )


def header_fields(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(flags, command, application, hop-by-hop, end-to-end) of a message whose
    header at least is there, or None: enough to answer one that does not decode."""
    if len(data) < HEADER_LENGTH:
        return None
    _, _, flags, command, application, hop, end = _HEADER.unpack_from(data)
    return flags, int.from_bytes(command, "big"), application, hop, end


# --------------------------------------------------------------------------------------------
# The M-bit rule


def unknown_mandatory(avps: Sequence[Avp], known: Iterable[tuple[int, int]]) -> Avp | None:
    """RFC 6733 section 4.1: the first AVP with the M bit set whose
    (vendor, code) is not in ``known`` (5001 DIAMETER_AVP_UNSUPPORTED), or None."""
    known_set = known if isinstance(known, (set, frozenset)) else set(known)
    for avp in avps:
        if avp.mandatory and (avp.vendor, avp.code) not in known_set:
            return avp
    return None


def iter_avps(avps: Iterable[Avp], code: int, vendor: int = 0) -> Iterator[Avp]:
    return (a for a in avps if a.code == code and a.vendor == vendor)


# --------------------------------------------------------------------------------------------
# Mobility security associations (RFC 4004 section 9)

#: The SPI member of each MSA group (MIP-MN-to-FA-MSA has none: its SPI is the FA's).
MSA_SPI: dict[int, int] = {
    AvpCode.MIP_FA_TO_HA_MSA: AvpCode.MIP_FA_TO_HA_SPI,
    AvpCode.MIP_HA_TO_FA_MSA: AvpCode.MIP_HA_TO_FA_SPI,
    AvpCode.MIP_FA_TO_MN_MSA: AvpCode.MIP_FA_TO_MN_SPI,
    AvpCode.MIP_MN_TO_HA_MSA: AvpCode.MIP_MN_HA_SPI,
    AvpCode.MIP_HA_TO_MN_MSA: AvpCode.MIP_MN_HA_SPI,
}
#: Groups that carry the key itself (MIP-Session-Key) rather than a nonce (MIP-Nonce).
MSA_KEY_GROUPS = frozenset(
    {AvpCode.MIP_FA_TO_HA_MSA, AvpCode.MIP_HA_TO_FA_MSA, AvpCode.MIP_FA_TO_MN_MSA, AvpCode.MIP_HA_TO_MN_MSA}
)
MSA_NONCE_GROUPS = frozenset({AvpCode.MIP_MN_TO_FA_MSA, AvpCode.MIP_MN_TO_HA_MSA})
#: Groups with MIP-Replay-Mode (RFC 4004 sections 9.3, 9.4: the MN-HA pair).
MSA_REPLAY_GROUPS = frozenset({AvpCode.MIP_MN_TO_HA_MSA, AvpCode.MIP_HA_TO_MN_MSA})


@dataclass(frozen=True)
class Msa:
    """The members of one MSA group (RFC 4004 section 9): which of them a group
    has is given by :data:`MSA_SPI`, :data:`MSA_KEY_GROUPS`,
    :data:`MSA_NONCE_GROUPS` and :data:`MSA_REPLAY_GROUPS`; ``aaa_spi``
    (MIP-MN-AAA-SPI) goes with a nonce."""

    algorithm: int = ALGORITHM_HMAC_SHA1
    spi: int | None = None
    session_key: bytes = field(default=b"", repr=False)  # a key: never in a repr
    nonce: bytes = b""
    replay_mode: int | None = None
    aaa_spi: int | None = None


def encode_msa(group: int, msa: Msa) -> Avp:
    """The grouped AVP ``group`` (325, 326, 328, 329, 331 or 332) holding ``msa``;
    :class:`DiameterValueError` if a member the group needs is missing."""
    if group not in MSA_KEY_GROUPS and group not in MSA_NONCE_GROUPS:
        raise DiameterValueError(f"AVP {group} is not an MSA")
    spi_code = MSA_SPI.get(group)
    needs = {
        "SPI": spi_code is not None and msa.spi is None and group != AvpCode.MIP_HA_TO_MN_MSA,
        "MIP-Session-Key": group in MSA_KEY_GROUPS and not msa.session_key,
        "MIP-Nonce": group in MSA_NONCE_GROUPS and not msa.nonce,
        "MIP-Replay-Mode": group in MSA_REPLAY_GROUPS and msa.replay_mode is None,
    }
    missing = [name for name, lacking in needs.items() if lacking]
    if missing:
        raise DiameterValueError(f"{AVPS[(0, group)].name} without {', '.join(missing)}")
    avps = []
    if spi_code is not None and msa.spi is not None:
        avps.append(avp_u32(spi_code, msa.spi))
    if msa.aaa_spi is not None:
        avps.append(avp_u32(AvpCode.MIP_MN_AAA_SPI, msa.aaa_spi))
    avps.append(avp_u32(AvpCode.MIP_ALGORITHM_TYPE, msa.algorithm))
    if msa.replay_mode is not None:
        avps.append(avp_u32(AvpCode.MIP_REPLAY_MODE, msa.replay_mode))
    if group in MSA_KEY_GROUPS:
        avps.append(avp_octets(AvpCode.MIP_SESSION_KEY, msa.session_key))
    else:
        avps.append(avp_octets(AvpCode.MIP_NONCE, msa.nonce))
    return avp_grouped(group, avps)


def decode_msa(avp: Avp) -> Msa:
    """The members of an MSA group; :class:`DiameterDecodeError` (5005 with the
    group as Failed-AVP) if one it needs is missing, 5014 if one has the wrong
    length, 5004 if the key or nonce is empty."""
    if avp.code not in MSA_KEY_GROUPS and avp.code not in MSA_NONCE_GROUPS:
        raise DiameterDecodeError(f"{avp.name} is not an MSA", result_code=ResultCode.INVALID_AVP_VALUE)
    members = avp.as_grouped()

    def member(code: int, required: bool) -> Avp | None:
        found = find_avp(members, code)
        if found is None and required:
            raise DiameterDecodeError(
                f"{avp.name} without {AVPS[(0, code)].name}",
                result_code=ResultCode.MISSING_AVP,
                failed_avp=encode_avp(avp),
            )
        return found

    spi_code = MSA_SPI.get(avp.code)
    # MIP-HA-to-MN-MSA may leave its SPI to MIP-MN-to-HA-MSA (RFC 4004 gives MIP-HA-to-MN-SPI no code).
    spi = member(spi_code, avp.code != AvpCode.MIP_HA_TO_MN_MSA) if spi_code is not None else None
    aaa_spi = member(AvpCode.MIP_MN_AAA_SPI, False)
    algorithm = member(AvpCode.MIP_ALGORITHM_TYPE, True)
    replay = member(AvpCode.MIP_REPLAY_MODE, avp.code in MSA_REPLAY_GROUPS)
    secret = member(AvpCode.MIP_SESSION_KEY if avp.code in MSA_KEY_GROUPS else AvpCode.MIP_NONCE, True)
    assert algorithm is not None and secret is not None
    if not secret.value:
        raise DiameterDecodeError(
            f"{avp.name}: an empty {secret.name}", result_code=ResultCode.INVALID_AVP_VALUE, failed_avp=encode_avp(avp)
        )
    return Msa(
        algorithm=algorithm.as_u32(),
        spi=spi.as_u32() if spi is not None else None,
        session_key=secret.value if avp.code in MSA_KEY_GROUPS else b"",
        nonce=secret.value if avp.code in MSA_NONCE_GROUPS else b"",
        replay_mode=replay.as_u32() if replay is not None else None,
        aaa_spi=aaa_spi.as_u32() if aaa_spi is not None else None,
    )


@dataclass(frozen=True)
class Identity:
    """This node's identity as CER/CEA and every request carry it (RFC 6733 section 5.3)."""

    host: str
    realm: str
    addresses: tuple[IPv4Address | IPv6Address, ...] = ()
    vendor_id: int = 0
    product_name: str = "aaa_vpn"
    firmware_revision: int | None = None
    origin_state_id: int = 0
    applications: tuple[int, ...] = field(default=(MOBILE_IPV4_APPLICATION,))

    def __post_init__(self) -> None:
        for name, value in (("host", self.host), ("realm", self.realm)):
            if not value or not value.isascii() or any(c.isspace() for c in value):
                raise DiameterValueError(f"Diameter {name} {value!r}: expected a non-empty FQDN")


__all__ = [
    "AVPS",
    "COMMAND_NAMES",
    "DIAMETER_PORT",
    "MOBILE_IPV4_APPLICATION",
    "Avp",
    "AvpCode",
    "AvpDef",
    "AvpType",
    "Command",
    "DiameterDecodeError",
    "DiameterValueError",
    "Identity",
    "Message",
    "Msa",
    "ResultCode",
    "avp_address",
    "avp_grouped",
    "avp_octets",
    "avp_text",
    "avp_u32",
    "avp_u64",
    "decode_avps",
    "decode_message",
    "decode_msa",
    "encode_avp",
    "encode_avps",
    "encode_message",
    "encode_msa",
    "find_avp",
    "header_fields",
    "message_length",
    "unknown_mandatory",
]
