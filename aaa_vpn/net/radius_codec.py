"""The few RADIUS encodings the server's hot path writes itself.

Replies are assembled here rather than through pyrad's ``Packet`` because the
reply attributes (the VPN profile) are already raw bytes, and pyrad would
encode the attribute list twice to compute the Message-Authenticator.

* Message-Authenticator first in every reply (RFC 3579 section 3.2, BlastRADIUS
  guidance): HMAC-MD5 keyed with the shared secret over Code, Identifier,
  Length, the *Request* Authenticator and the attributes with the M-A zeroed.
* Response Authenticator: MD5(Code || ID || Length || Request Authenticator ||
  Attributes || Secret) (RFC 2865 section 3), computed after the M-A.
* Status-Server replies follow the same rules (RFC 5997 section 3).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

MAX_PACKET = 4096  # RFC 2865 section 3
HEADER = 20
MA_ATTRIBUTE_ZERO = b"\x50\x12" + b"\x00" * 16
MA_LENGTH = 18

ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCOUNTING_REQUEST = 4
ACCESS_CHALLENGE = 11
STATUS_SERVER = 12

USER_NAME = 1
CHAP_PASSWORD = 3
NAS_IP_ADDRESS = 4
REPLY_MESSAGE = 18
SESSION_TIMEOUT = 27
PROXY_STATE = 33
CHAP_CHALLENGE = 60
MESSAGE_AUTHENTICATOR = 80


class ReplyTooLarge(ValueError):
    """The reply would exceed 4096 octets (RFC 2865 section 3)."""


def attribute(code: int, value: bytes) -> bytes:
    """One standard attribute; raises ValueError if the value exceeds 253 octets."""
    if len(value) > 253:
        raise ValueError(f"attribute {code}: value of {len(value)} octets, at most 253 fit")
    return bytes((code, len(value) + 2)) + value


def vendor_attribute(vendor: int, code: int, value: bytes) -> bytes:
    """One Vendor-Specific attribute in the RFC 2865 section 5.26 recommended form."""
    if len(value) > 247:
        raise ValueError(f"vendor attribute {vendor}:{code}: value of {len(value)} octets, at most 247 fit")
    return struct.pack("!BBIBB", 26, len(value) + 8, vendor, code, len(value) + 2) + value


def encode_reply(code: int, identifier: int, request_authenticator: bytes, secret: bytes, attributes: bytes) -> bytes:
    """A complete reply with the Message-Authenticator first."""
    length = HEADER + MA_LENGTH + len(attributes)
    if length > MAX_PACKET:
        raise ReplyTooLarge(f"reply of {length} octets exceeds the RADIUS maximum of {MAX_PACKET}")
    header = struct.pack("!BBH", code, identifier, length)
    ma = hmac.new(secret, header + request_authenticator + MA_ATTRIBUTE_ZERO + attributes, "md5").digest()
    body = b"\x50\x12" + ma + attributes
    response_authenticator = hashlib.md5(header + request_authenticator + body + secret).digest()
    return header + response_authenticator + body


def check_request_message_authenticator(packet: bytes, secret: bytes) -> bool | None:
    """Verify the Message-Authenticator of a received *request* (Access-Request
    or Status-Server): HMAC-MD5 over the packet with the M-A value zeroed.

    Returns None when the packet has no Message-Authenticator, else whether it
    is valid. ``packet`` must already be length-checked (header Length ==
    len(packet)) and its attributes well formed."""
    position = HEADER
    end = len(packet)
    while position + 2 <= end:
        code, length = packet[position], packet[position + 1]
        if length < 2:
            return False
        if code == MESSAGE_AUTHENTICATOR:
            if length != MA_LENGTH:
                return False
            received = packet[position + 2 : position + 18]
            zeroed = packet[: position + 2] + b"\x00" * 16 + packet[position + 18 :]
            expected = hmac.new(secret, zeroed, "md5").digest()
            return hmac.compare_digest(received, expected)
        position += length
    return None
