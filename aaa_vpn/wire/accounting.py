"""RADIUS accounting (RFC 2866) as values: an Accounting-Request decoded into
one :class:`AccountingRequest`, and encoded from one.

Rules:

1. An Accounting-Request's Request Authenticator is
   MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret)
   (RFC 2866 section 3); a Message-Authenticator, if present, is computed
   with that field zeroed (RFC 3579 section 3.2). The server plumbing
   (roles/radius_server.py) checks both before anything here runs.
2. Acct-Status-Type is required (RFC 2866 section 5.1); Acct-Session-Id is
   required except in Accounting-On and Accounting-Off, which speak for the
   whole NAS (RFC 2866 section 5.5 says every request; NASes omit it in
   On/Off, and FreeRADIUS accepts that). A NAS is known by NAS-IP-Address
   or NAS-Identifier; a request with neither is a decode error (RFC 2865
   section 5.4 asks for one).
3. The record's key is FreeRADIUS's Acct-Unique-Session-Id, so that a
   carrier moving from FreeRADIUS's ``radacct`` keeps its keys: the hex MD5
   of "User-Name,Acct-Session-Id,NAS-IP-Address,NAS-Identifier,
   NAS-Port-Id,NAS-Port" (each as text, empty when absent), FreeRADIUS
   3.x's ``acct_unique`` policy when the Class is not its own.
4. Counters are 64-bit: Acct-Input-Octets + 2^32 x Acct-Input-Gigawords
   (RFC 2869 section 5.1), the same for output. The event's time is
   Event-Timestamp if present, else the arrival time less Acct-Delay-Time
   (RFC 2866 section 5.2).
5. Every attribute is kept by its dictionary name (the project's set, which
   names the 3GPP2 accounting attributes of X.S0011-005 as FreeRADIUS does):
   integers as numbers (an enumerated value by its name), addresses and
   dates as text, strings as text when they are printable UTF-8 and as hex
   otherwise. Message-Authenticator, Proxy-State and encrypted attributes
   are never kept. An attribute the dictionary does not know is kept as
   ``Attr-<type>`` or ``Vendor-<id>-Attr-<type>`` with its value in hex.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.reader import DecodeError


class AcctStatus(enum.IntEnum):
    """Acct-Status-Type (RFC 2866 section 5.1)."""

    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8


class AccountingDecodeError(DecodeError):
    """An Accounting-Request that cannot be recorded (module rule 2)."""


# Attribute types (RFC 2865, 2866, 2869): the RADIUS kit's.
_A = rc.Attr
_USER_NAME, _NAS_IP, _NAS_PORT, _CLASS = _A.USER_NAME, _A.NAS_IP_ADDRESS, _A.NAS_PORT, _A.CLASS
_NAS_IDENTIFIER, _NAS_PORT_ID, _EVENT_TIMESTAMP = _A.NAS_IDENTIFIER, _A.NAS_PORT_ID, _A.EVENT_TIMESTAMP
_STATUS, _DELAY, _SESSION_ID = _A.ACCT_STATUS_TYPE, _A.ACCT_DELAY_TIME, _A.ACCT_SESSION_ID
_IN_OCTETS, _OUT_OCTETS = _A.ACCT_INPUT_OCTETS, _A.ACCT_OUTPUT_OCTETS
_IN_PACKETS, _OUT_PACKETS = _A.ACCT_INPUT_PACKETS, _A.ACCT_OUTPUT_PACKETS
_IN_GIGAWORDS, _OUT_GIGAWORDS = _A.ACCT_INPUT_GIGAWORDS, _A.ACCT_OUTPUT_GIGAWORDS
_SESSION_TIME, _TERMINATE_CAUSE = _A.ACCT_SESSION_TIME, _A.ACCT_TERMINATE_CAUSE
_NEVER_KEPT = frozenset((rc.MESSAGE_AUTHENTICATOR_TYPE, rc.PROXY_STATE, 2, 3, 69))  # + User-/CHAP-/Tunnel-Password
_U32 = struct.Struct("!I")

#: The prefix of the Class the home AAA puts in every Access-Accept: the
#: session it answered for travels back in its accounting (RFC 2865 section 5.25).
CLASS_PREFIX = b"aaa-vpn:"


def session_class(session_id: str) -> bytes:
    """The Class attribute's value naming ``session_id``."""
    return CLASS_PREFIX + session_id.encode()


def session_of_class(value: bytes) -> str:
    """The session a Class of ours names, else ""."""
    if not value.startswith(CLASS_PREFIX):
        return ""
    try:
        return value[len(CLASS_PREFIX) :].decode("ascii")
    except UnicodeDecodeError:
        return ""


@dataclass(frozen=True)
class AccountingRequest:
    """One decoded Accounting-Request (module rules)."""

    status: AcctStatus
    acct_session_id: str
    user_name: str = ""
    nas_ip_address: IPv4Address | None = None
    nas_identifier: str = ""
    nas_port: int | None = None
    nas_port_id: str = ""
    class_value: bytes = b""
    delay: int = 0
    event_timestamp: int | None = None
    session_time: int | None = None
    input_octets: int | None = None
    output_octets: int | None = None
    input_packets: int | None = None
    output_packets: int | None = None
    terminate_cause: str = ""
    #: Every other attribute kept, by dictionary name (rule 5).
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def unique_id(self) -> str:
        """FreeRADIUS's Acct-Unique-Session-Id (rule 3)."""
        text = ",".join(
            (
                self.user_name,
                self.acct_session_id,
                "" if self.nas_ip_address is None else str(self.nas_ip_address),
                self.nas_identifier,
                self.nas_port_id,
                "" if self.nas_port is None else str(self.nas_port),
            )
        )
        return hashlib.md5(text.encode("utf-8", "surrogateescape")).hexdigest()

    @property
    def session_id(self) -> str:
        """The aaa_vpn session its Class names, else ""."""
        return session_of_class(self.class_value)

    def event_time(self, arrived: float) -> float:
        """When the event happened (rule 4)."""
        return float(self.event_timestamp) if self.event_timestamp is not None else arrived - self.delay

    @property
    def nas(self) -> str:
        """The NAS as the store names it: its address, else its identifier."""
        return str(self.nas_ip_address) if self.nas_ip_address is not None else self.nas_identifier


@functools.cache
def _names() -> dict[tuple[int, int], tuple[str, str, dict[int, str]]]:
    """(vendor id, type) -> (name, type, enumerated values) from the project's dictionaries."""
    dictionary = rc.load_dictionary()
    vendors: dict[str, int] = dict(dictionary.vendors.forward)
    table: dict[tuple[int, int], tuple[str, str, dict[int, str]]] = {}
    for name, attribute in dictionary.attributes.items():
        vendor = vendors.get(attribute.vendor, 0) if attribute.vendor else 0
        code = attribute.code if isinstance(attribute.code, int) else None
        if code is None or getattr(attribute, "encrypt", False):
            continue
        values = {int.from_bytes(raw, "big"): label for label, raw in attribute.values.forward.items()}
        table[(vendor, code)] = (name, attribute.type, values)
    return table


def _value(kind: str, raw: bytes, values: dict[int, str]) -> Any:
    if kind in ("integer", "date") and len(raw) == 4:
        number = _U32.unpack(raw)[0]
        if kind == "date":
            return number
        return values.get(number, number)
    if kind == "ipaddr" and len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if kind == "string":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
        if text.isprintable():
            return text
    return raw.hex()


def _keep(attributes: dict[str, Any], vendor: int, code: int, raw: bytes) -> None:
    known = _names().get((vendor, code))
    if known is None:
        name = f"Attr-{code}" if vendor == 0 else f"Vendor-{vendor}-Attr-{code}"
        value: Any = raw.hex()
    else:
        name, kind, values = known
        value = _value(kind, raw, values)
    previous = attributes.get(name)
    if previous is None:
        attributes[name] = value
    elif isinstance(previous, list):
        previous.append(value)
    else:
        attributes[name] = [previous, value]


def _u32(what: str, value: bytes) -> int:
    if len(value) != 4:
        raise AccountingDecodeError(f"Accounting-Request: {what} is {len(value)} octets, expected 4")
    return int(_U32.unpack(value)[0])


def _text(what: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise AccountingDecodeError(f"Accounting-Request: {what} is not UTF-8") from None


def decode_accounting_request(packet: rc.Packet) -> AccountingRequest:
    """The Accounting-Request ``packet`` (authenticated already, rule 1) as
    one value; :class:`AccountingDecodeError` if it cannot be recorded."""
    singles: dict[int, bytes] = {}
    kept: dict[str, Any] = {}
    for code, value in packet.attributes:
        if code == rc.VENDOR_SPECIFIC:
            if len(value) < 6:
                raise AccountingDecodeError("Accounting-Request: a Vendor-Specific attribute shorter than 6 octets")
            vendor = int.from_bytes(value[:4], "big")
            for vendor_type, vendor_value in _vendor_attributes(vendor, value[4:]):
                _keep(kept, vendor, vendor_type, vendor_value)
            continue
        if code in _NEVER_KEPT:
            continue
        if code in _SINGLE:
            if code in singles:
                raise AccountingDecodeError(f"Accounting-Request: {_SINGLE[code]} appears twice")
            singles[code] = value
        else:
            _keep(kept, 0, code, value)
    if _STATUS not in singles:
        raise AccountingDecodeError("Accounting-Request: no Acct-Status-Type (RFC 2866 section 5.1)")
    try:
        status = AcctStatus(_u32("Acct-Status-Type", singles[_STATUS]))
    except ValueError:
        raise AccountingDecodeError(
            f"Accounting-Request: Acct-Status-Type {_U32.unpack(singles[_STATUS])[0]} is not one this server records"
        ) from None
    session_id = _text("Acct-Session-Id", singles[_SESSION_ID]) if _SESSION_ID in singles else ""
    if not session_id and status not in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
        raise AccountingDecodeError("Accounting-Request: no Acct-Session-Id (RFC 2866 section 5.5)")
    nas_ip = singles.get(_NAS_IP)
    if nas_ip is not None and len(nas_ip) != 4:
        raise AccountingDecodeError("Accounting-Request: NAS-IP-Address is not 4 octets")
    identifier = _text("NAS-Identifier", singles[_NAS_IDENTIFIER]) if _NAS_IDENTIFIER in singles else ""
    if nas_ip is None and not identifier:
        raise AccountingDecodeError("Accounting-Request: neither NAS-IP-Address nor NAS-Identifier")

    def counter(low: int, high: int, what: str) -> int | None:
        if low not in singles:
            return None
        gigawords = _u32(f"{what} Gigawords", singles[high]) if high in singles else 0
        return _u32(what, singles[low]) + (gigawords << 32)

    def number(code: int, what: str) -> int | None:
        return _u32(what, singles[code]) if code in singles else None

    cause = number(_TERMINATE_CAUSE, "Acct-Terminate-Cause")
    cause_names = _names().get((0, _TERMINATE_CAUSE), ("", "", {}))[2]
    return AccountingRequest(
        status=status,
        acct_session_id=session_id,
        user_name=_text("User-Name", singles[_USER_NAME]) if _USER_NAME in singles else "",
        nas_ip_address=IPv4Address(nas_ip) if nas_ip is not None else None,
        nas_identifier=identifier,
        nas_port=number(_NAS_PORT, "NAS-Port"),
        nas_port_id=_text("NAS-Port-Id", singles[_NAS_PORT_ID]) if _NAS_PORT_ID in singles else "",
        class_value=singles.get(_CLASS, b""),
        delay=number(_DELAY, "Acct-Delay-Time") or 0,
        event_timestamp=number(_EVENT_TIMESTAMP, "Event-Timestamp"),
        session_time=number(_SESSION_TIME, "Acct-Session-Time"),
        input_octets=counter(_IN_OCTETS, _IN_GIGAWORDS, "Acct-Input-Octets"),
        output_octets=counter(_OUT_OCTETS, _OUT_GIGAWORDS, "Acct-Output-Octets"),
        input_packets=number(_IN_PACKETS, "Acct-Input-Packets"),
        output_packets=number(_OUT_PACKETS, "Acct-Output-Packets"),
        terminate_cause="" if cause is None else cause_names.get(cause, str(cause)),
        attributes=kept,
    )


_SINGLE: dict[int, str] = {
    _USER_NAME: "User-Name",
    _NAS_IP: "NAS-IP-Address",
    _NAS_PORT: "NAS-Port",
    _CLASS: "Class",
    _NAS_IDENTIFIER: "NAS-Identifier",
    _STATUS: "Acct-Status-Type",
    _DELAY: "Acct-Delay-Time",
    _IN_OCTETS: "Acct-Input-Octets",
    _OUT_OCTETS: "Acct-Output-Octets",
    _SESSION_ID: "Acct-Session-Id",
    _SESSION_TIME: "Acct-Session-Time",
    _IN_PACKETS: "Acct-Input-Packets",
    _OUT_PACKETS: "Acct-Output-Packets",
    _TERMINATE_CAUSE: "Acct-Terminate-Cause",
    _IN_GIGAWORDS: "Acct-Input-Gigawords",
    _OUT_GIGAWORDS: "Acct-Output-Gigawords",
    _EVENT_TIMESTAMP: "Event-Timestamp",
    _NAS_PORT_ID: "NAS-Port-Id",
}


def _vendor_attributes(vendor: int, data: bytes) -> list[tuple[int, bytes]]:
    """The RFC 2865 section 5.26 sub-attributes (type, length, value) of a
    Vendor-Specific's data; one opaque value if they do not parse."""
    out: list[tuple[int, bytes]] = []
    position = 0
    while position < len(data):
        if len(data) - position < 2 or data[position + 1] < 2 or position + data[position + 1] > len(data):
            return [(0, data)]
        length = data[position + 1]
        out.append((data[position], data[position + 2 : position + length]))
        position += length
    return out


def encode_accounting_request(
    identifier: int,
    secret: bytes,
    status: AcctStatus,
    acct_session_id: str,
    attributes: Sequence[bytes] = (),
) -> bytes:
    """An Accounting-Request: :func:`accounting_attributes`, hashed with
    ``secret`` (rule 1)."""
    return rc.encode_hashed_request(
        rc.ACCOUNTING_REQUEST, identifier, secret, accounting_attributes(status, acct_session_id, attributes)
    )


def accounting_attributes(status: AcctStatus, acct_session_id: str, attributes: Sequence[bytes] = ()) -> list[bytes]:
    """An Accounting-Request's attributes: Acct-Status-Type, Acct-Session-Id
    (unless empty), then ``attributes`` (complete raw attributes)."""
    body = [rc.attribute(_STATUS, _U32.pack(int(status)))]
    if acct_session_id:
        body.append(rc.attribute(_SESSION_ID, acct_session_id.encode()))
    body += attributes
    return body


def counter_attributes(input_octets: int, output_octets: int, input_packets: int, output_packets: int) -> list[bytes]:
    """The RFC 2866/2869 counter attributes of 64-bit octet counts (rule 4)."""
    return [
        rc.attribute(_IN_OCTETS, _U32.pack(input_octets & 0xFFFFFFFF)),
        rc.attribute(_OUT_OCTETS, _U32.pack(output_octets & 0xFFFFFFFF)),
        rc.attribute(_IN_GIGAWORDS, _U32.pack(input_octets >> 32 & 0xFFFFFFFF)),
        rc.attribute(_OUT_GIGAWORDS, _U32.pack(output_octets >> 32 & 0xFFFFFFFF)),
        rc.attribute(_IN_PACKETS, _U32.pack(input_packets & 0xFFFFFFFF)),
        rc.attribute(_OUT_PACKETS, _U32.pack(output_packets & 0xFFFFFFFF)),
    ]


__all__ = [
    "CLASS_PREFIX",
    "AccountingDecodeError",
    "AccountingRequest",
    "AcctStatus",
    "accounting_attributes",
    "counter_attributes",
    "decode_accounting_request",
    "encode_accounting_request",
    "session_class",
    "session_of_class",
]
