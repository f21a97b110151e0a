"""RADIUS building blocks shared by the codecs and the network layer.

* :func:`salt_encrypt` / :func:`salt_decrypt`: the salt scheme of RFC 2868
  section 3.5 (Tunnel-Password; dictionaries say ``encrypt=2``), which the
  project uses for every key it sends in an attribute (DESIGN.md section 3).
* :func:`hide_user_password` / :func:`recover_user_password`: RFC 2865
  section 5.2 (``encrypt=1``).
* :func:`response_authenticator` (RFC 2865 section 3), and the
  Message-Authenticator (RFC 3579 section 3.2, RFC 5176 section 3.4):
  :func:`compute_message_authenticator`, :func:`verify_message_authenticator`,
  and :func:`encode_reply`, which builds a complete reply with the
  Message-Authenticator as its first attribute (BlastRADIUS, CVE-2024-3596).
* Size limits of RFC 2865 sections 3 and 5.
* :func:`load_dictionary`: the project's full dictionary set as a cached
  :class:`pyrad.dictionary.Dictionary`; :func:`prepare_tool_dir`: a directory
  that radclient (``-d``) and tshark (``WIRESHARK_CONFIG_DIR``) can use.

Pure functions: no sockets, no clock. ``hashlib.md5`` is used directly
because the server calls these on its hot path.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.resources
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyrad has no type hints; import it only where it is used
    from pyrad.dictionary import Dictionary

#: RFC 2865 section 3: the largest RADIUS packet.
MAX_PACKET_LENGTH = 4096
#: RFC 2865 section 3: Code, Identifier, Length, Authenticator.
HEADER_LENGTH = 20
#: RFC 2865 section 3: the Authenticator field.
AUTHENTICATOR_LENGTH = 16
#: RFC 2869 section 5.14: Type 80, Length 18, 16 octets of HMAC-MD5.
MESSAGE_AUTHENTICATOR_TYPE = 80
MESSAGE_AUTHENTICATOR_LENGTH = 18
#: RFC 2865 section 5: one octet of Length covers Type and Length too.
MAX_ATTRIBUTE_VALUE = 253
#: RFC 2865 section 5.26: Vendor-Id (4) and vendor type and length (2) inside
#: the 253 value octets of a Vendor-Specific attribute.
MAX_VSA_VALUE = MAX_ATTRIBUTE_VALUE - 6
#: RFC 2868 section 3.5: Tag (1) and Salt (2) leave 250 octets, i.e. 15 blocks
#: of 16; one of the 240 plaintext octets is the length octet. The same limit
#: holds for a Vendor-Specific attribute (247 - 3 -> 15 blocks).
MAX_SALT_PLAINTEXT = 239
#: Bytes a reply has for attributes after the header and the Message-Authenticator.
DEFAULT_ATTRIBUTE_BUDGET = MAX_PACKET_LENGTH - HEADER_LENGTH - MESSAGE_AUTHENTICATOR_LENGTH

_BLOCK = 16

# Packet codes (RFC 2865 section 3, RFC 5997) and attribute types the code names.
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


class ReplyTooLarge(ValueError):
    """A reply would exceed 4096 octets (RFC 2865 section 3)."""


def attribute(code: int, value: bytes) -> bytes:
    """One standard attribute; ValueError if the value exceeds 253 octets."""
    if len(value) > MAX_ATTRIBUTE_VALUE:
        raise ValueError(f"attribute {code}: value of {len(value)} octets, at most {MAX_ATTRIBUTE_VALUE} fit")
    return bytes((code, len(value) + 2)) + value


def vendor_attribute(vendor: int, code: int, value: bytes) -> bytes:
    """One Vendor-Specific attribute in the RFC 2865 section 5.26 recommended form."""
    if len(value) > MAX_VSA_VALUE:
        raise ValueError(f"vendor attribute {vendor}:{code}: value of {len(value)} octets, at most {MAX_VSA_VALUE}")
    return struct.pack("!BBIBB", 26, len(value) + 8, vendor, code, len(value) + 2) + value


def _xor16(a: bytes, b: bytes) -> bytes:
    # int XOR is several times faster than a per-byte generator in CPython.
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(_BLOCK, "big")


def salt_encrypt(value: bytes, secret: bytes, request_authenticator: bytes, salt: bytes) -> bytes:
    """Encrypt ``value`` per RFC 2868 section 3.5 and return ``salt || ciphertext``.

    ``request_authenticator`` is the one of the Access-Request being answered
    (for CoA-Request and Accounting-Request, whose authenticator covers the
    attributes, 16 zero octets, as FreeRADIUS and pyrad do). ``salt`` is two
    octets with the most significant bit set, unique per attribute in the
    packet (the caller guarantees uniqueness). The plaintext is the length
    octet and ``value``, zero-padded to a multiple of 16::

        b(1) = MD5(S + R + A)    c(1) = p(1) xor b(1)
        b(i) = MD5(S + c(i-1))   c(i) = p(i) xor b(i)

    Raises ValueError if ``value`` is longer than :data:`MAX_SALT_PLAINTEXT`
    (it could never fit into an attribute) or the salt is malformed.
    """
    if len(value) > MAX_SALT_PLAINTEXT:
        raise ValueError(f"salt-encrypted value is {len(value)} octets, at most {MAX_SALT_PLAINTEXT} fit")
    if len(salt) != 2 or not salt[0] & 0x80:
        raise ValueError("the salt is two octets with the most significant bit set (RFC 2868 section 3.5)")
    plain = bytes((len(value),)) + value
    plain += b"\x00" * (-len(plain) % _BLOCK)
    keyed = hashlib.md5(secret)
    out = [salt]
    chain = request_authenticator + salt
    for i in range(0, len(plain), _BLOCK):
        h = keyed.copy()
        h.update(chain)
        chain = _xor16(plain[i : i + _BLOCK], h.digest())
        out.append(chain)
    return b"".join(out)


def salt_decrypt(data: bytes, secret: bytes, request_authenticator: bytes, *, strict: bool = True) -> bytes:
    """Reverse :func:`salt_encrypt`: ``data`` is ``salt || ciphertext``.

    Raises ValueError if the length is not 2 + a multiple of 16, the salt's
    most significant bit is clear, or the decrypted length octet is larger
    than the plaintext. With ``strict`` (the default) the padding must be
    zeros too (RFC 2868 section 3.5), which also catches most wrong secrets.
    """
    if len(data) < 2 + _BLOCK or (len(data) - 2) % _BLOCK:
        raise ValueError(f"salt-encrypted value of {len(data)} octets: expected 2 + a multiple of 16")
    salt = data[:2]
    if not salt[0] & 0x80:
        raise ValueError("salt without its most significant bit (RFC 2868 section 3.5)")
    keyed = hashlib.md5(secret)
    chain = request_authenticator + salt
    out = []
    for i in range(2, len(data), _BLOCK):
        block = data[i : i + _BLOCK]
        h = keyed.copy()
        h.update(chain)
        out.append(_xor16(block, h.digest()))
        chain = block  # RFC 2868 section 3.5: chain on the ciphertext
    plain = b"".join(out)
    length = plain[0]
    if length > len(plain) - 1:
        raise ValueError("salt-encrypted value: the length octet exceeds the data (wrong secret?)")
    if strict and any(plain[1 + length :]):
        raise ValueError("salt-encrypted value: non-zero padding (wrong secret or authenticator?)")
    return plain[1 : 1 + length]


def hide_user_password(password: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """User-Password hiding of RFC 2865 section 5.2 (at most 128 octets)."""
    if not 1 <= len(password) <= 128:
        raise ValueError("a User-Password is 1..128 octets (RFC 2865 section 5.2)")
    plain = password + b"\x00" * (-len(password) % _BLOCK)
    keyed = hashlib.md5(secret)
    chain = request_authenticator
    out = []
    for i in range(0, len(plain), _BLOCK):
        h = keyed.copy()
        h.update(chain)
        chain = _xor16(plain[i : i + _BLOCK], h.digest())
        out.append(chain)
    return b"".join(out)


def recover_user_password(hidden: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """Reverse :func:`hide_user_password`; trailing NUL padding is removed."""
    if not hidden or len(hidden) % _BLOCK or len(hidden) > 128:
        raise ValueError("a hidden User-Password is 16..128 octets, a multiple of 16")
    keyed = hashlib.md5(secret)
    chain = request_authenticator
    out = []
    for i in range(0, len(hidden), _BLOCK):
        block = hidden[i : i + _BLOCK]
        h = keyed.copy()
        h.update(chain)
        out.append(_xor16(block, h.digest()))
        chain = block
    return b"".join(out).rstrip(b"\x00")


def response_authenticator(packet: bytes, request_authenticator: bytes, secret: bytes) -> bytes:
    """RFC 2865 section 3: MD5(Code + Identifier + Length + RequestAuth + Attributes + Secret).

    ``packet`` is the complete reply; its own Authenticator field is ignored.
    """
    return hashlib.md5(packet[:4] + request_authenticator + packet[HEADER_LENGTH:] + secret).digest()


def _find_message_authenticator(packet: bytes) -> int:
    """Offset of the Message-Authenticator's value in ``packet``, or -1."""
    pos = HEADER_LENGTH
    end = len(packet)
    while pos + 2 <= end:
        atype, alen = packet[pos], packet[pos + 1]
        if alen < 2:
            return -1
        if atype == MESSAGE_AUTHENTICATOR_TYPE:
            return pos + 2 if alen == MESSAGE_AUTHENTICATOR_LENGTH else -1
        pos += alen
    return -1


def compute_message_authenticator(packet: bytes, secret: bytes, request_authenticator: bytes | None = None) -> bytes:
    """HMAC-MD5 of RFC 3579 section 3.2 over ``packet``.

    The Message-Authenticator value is taken as 16 zero octets. For a reply
    (Access-Accept/Reject/Challenge) pass the Access-Request's authenticator
    as ``request_authenticator``: it replaces the packet's Authenticator field
    in the computation. For CoA/Disconnect-Request and Accounting-Request pass
    16 zero octets (RFC 5176 section 3.4). Raises ValueError if the packet has
    no well-formed Message-Authenticator.
    """
    offset = _find_message_authenticator(packet)
    if offset < 0:
        raise ValueError("the packet has no Message-Authenticator (type 80, length 18)")
    authenticator = packet[4:HEADER_LENGTH] if request_authenticator is None else request_authenticator
    mac = hmac.new(secret, digestmod=hashlib.md5)
    mac.update(packet[:4])
    mac.update(authenticator)
    mac.update(packet[HEADER_LENGTH:offset])
    mac.update(b"\x00" * AUTHENTICATOR_LENGTH)
    mac.update(packet[offset + AUTHENTICATOR_LENGTH :])
    return mac.digest()


def verify_message_authenticator(packet: bytes, secret: bytes, request_authenticator: bytes | None = None) -> bool:
    """True if ``packet`` carries a valid Message-Authenticator (constant-time compare)."""
    offset = _find_message_authenticator(packet)
    if offset < 0:
        return False
    expected = compute_message_authenticator(packet, secret, request_authenticator)
    return hmac.compare_digest(packet[offset : offset + AUTHENTICATOR_LENGTH], expected)


def encode_reply(
    code: int,
    identifier: int,
    request_authenticator: bytes,
    secret: bytes,
    attributes: bytes | Sequence[bytes],
) -> bytes:
    """A complete reply to an Access-Request: header, Message-Authenticator
    first (FreeRADIUS' BlastRADIUS guidance), then ``attributes`` (raw: one
    byte string, or a list such as :func:`aaa_vpn.wire.radius_profile.encode_profile`
    returns). Also right for Status-Server replies (RFC 5997 section 3).

    The Message-Authenticator is computed before the Response Authenticator
    (RFC 3579 section 3.2). Raises :class:`ReplyTooLarge` beyond 4096 octets."""
    body = attributes if isinstance(attributes, bytes) else b"".join(attributes)
    length = HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(body)
    if length > MAX_PACKET_LENGTH:
        raise ReplyTooLarge(f"reply of {length} octets exceeds {MAX_PACKET_LENGTH} (RFC 2865 section 3)")
    head = struct.pack("!BBH", code, identifier, length)
    mac = hmac.new(secret, head + request_authenticator + _MA_ZERO + body, hashlib.md5).digest()
    attrs = b"\x50\x12" + mac + body
    auth = hashlib.md5(head + request_authenticator + attrs + secret).digest()
    return head + auth + attrs


_MA_ZERO = b"\x50\x12" + b"\x00" * AUTHENTICATOR_LENGTH


def check_request_message_authenticator(packet: bytes, secret: bytes) -> bool | None:
    """The Message-Authenticator of a received *request* (Access-Request,
    Status-Server): None when it has none, else whether it is valid.

    ``packet`` must be length-checked (Length == len(packet)); malformed
    attributes make it False rather than raise."""
    position = HEADER_LENGTH
    end = len(packet)
    while position + 2 <= end:
        code, length = packet[position], packet[position + 1]
        if length < 2:
            return False
        if code == MESSAGE_AUTHENTICATOR_TYPE:
            if length != MESSAGE_AUTHENTICATOR_LENGTH:
                return False
            received = packet[position + 2 : position + 18]
            zeroed = packet[: position + 2] + b"\x00" * 16 + packet[position + 18 :]
            return hmac.compare_digest(received, hmac.new(secret, zeroed, hashlib.md5).digest())
        position += length
    return None


# --- dictionaries ---------------------------------------------------------------------------

#: The root file of the full set (what pyrad loads).
ROOT_DICTIONARY = "dictionary"
#: The vendor file: the only one radclient and tshark need.
VENDOR_DICTIONARY = "dictionary.aaa_vpn"
#: Corrections to tshark's own dictionary, appended for tshark only.
WIRESHARK_FIXES = "dictionary.wireshark"


@functools.cache
def dictionary_dir() -> Path:
    """The directory holding the project's dictionaries.

    Normally the package directory itself; if the package is not on a file
    system (a zip), the files are copied once to a temporary directory,
    because ``$INCLUDE`` needs real paths.
    """
    root = importlib.resources.files("aaa_vpn") / "dictionaries"
    if isinstance(root, Path):
        return root
    target = Path(tempfile.mkdtemp(prefix="aaa_vpn-dictionaries-"))

    def copy(node: importlib.resources.abc.Traversable, dest: Path) -> None:
        for child in node.iterdir():
            if child.is_dir():
                (dest / child.name).mkdir()
                copy(child, dest / child.name)
            else:
                (dest / child.name).write_bytes(child.read_bytes())

    copy(root, target)
    return target


@functools.cache
def load_dictionary() -> Dictionary:
    """The full dictionary set (RFC 2865/2866/2868/2869/5176, 3GPP2 subset,
    aaa_vpn vendor) as one pyrad Dictionary, parsed once and cached.

    The object is shared: do not modify it.
    """
    from pyrad.dictionary import Dictionary

    return Dictionary(str(dictionary_dir() / ROOT_DICTIONARY))


def prepare_tool_dir(directory: str | os.PathLike[str]) -> Path:
    """Make ``directory`` usable both as ``radclient -d <directory>`` and as
    ``WIRESHARK_CONFIG_DIR=<directory>`` for tshark, and return it.

    * ``<directory>/dictionary``: a copy of the vendor dictionary. radclient
      reads ``/usr/share/freeradius/dictionary`` and then ``<dir>/dictionary``.
    * ``<directory>/radius/dictionary``: the vendor dictionary followed by
      ``dictionary.wireshark`` (fixes for tshark's own 3GPP2 file). tshark
      loads it in addition to its global RADIUS dictionary.

    Only vendor attributes are written: both tools bring their own standard,
    RFC 2868 and 3GPP2 definitions. Copies, not ``$INCLUDE``, so the
    directory stands alone. Existing files of these names are replaced.
    """
    path = Path(directory)
    (path / "radius").mkdir(parents=True, exist_ok=True)
    source = dictionary_dir()
    vendor = (source / VENDOR_DICTIONARY).read_bytes()
    (path / "dictionary").write_bytes(vendor)
    fixes = (source / WIRESHARK_FIXES).read_bytes()
    (path / "radius" / "dictionary").write_bytes(vendor + b"\n" + fixes)
    return path


__all__ = [
    "AUTHENTICATOR_LENGTH",
    "DEFAULT_ATTRIBUTE_BUDGET",
    "HEADER_LENGTH",
    "MAX_ATTRIBUTE_VALUE",
    "MAX_PACKET_LENGTH",
    "MAX_SALT_PLAINTEXT",
    "MAX_VSA_VALUE",
    "MESSAGE_AUTHENTICATOR_LENGTH",
    "MESSAGE_AUTHENTICATOR_TYPE",
    "ROOT_DICTIONARY",
    "VENDOR_DICTIONARY",
    "WIRESHARK_FIXES",
    "compute_message_authenticator",
    "dictionary_dir",
    "encode_reply",
    "hide_user_password",
    "load_dictionary",
    "prepare_tool_dir",
    "recover_user_password",
    "response_authenticator",
    "salt_decrypt",
    "salt_encrypt",
    "verify_message_authenticator",
]
