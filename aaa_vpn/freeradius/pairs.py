"""FreeRADIUS value pairs <-> RADIUS attributes, in the text forms rlm_python3 uses.

rlm_python3 (FreeRADIUS 3.2, ``src/modules/rlm_python3/rlm_python3.c``) hands
a module each list as a tuple of ``(name, value)`` string pairs and takes
pairs back the same way:

* **Names**: the dictionary name; a tagged attribute (RFC 2868 section 3) as
  ``Name:tag`` (rlm_python3 prints ``Name:0`` for an untagged one). A name
  the server's dictionaries do not know is ``Attr-26.<vendor>.<type>`` or
  ``Attr-<type>`` with an octets value.
* **Values in** (``vp_prints_value`` with no quoting): integers as their
  VALUE name where the dictionary has one, else decimal; IPv4 addresses
  dotted; octets as ``0x`` and lowercase hex; strings raw, except that
  ``\\r``, ``\\n``, ``\\t`` and every octet that is not part of valid UTF-8
  are escaped (``\\ooo`` in octal) -- a backslash is not, which is unambiguous
  for what the home AAA reads (an RFC 7542 NAI has no backslash; session ids
  are hex). :func:`unescape_printed` reverses it.
* **Values out** (``fr_pair_value_from_str``, which reads a double-quoted
  string's escapes): :func:`escape_string` writes a backslash as ``\\\\`` and
  every octet outside printable ASCII as ``\\ooo``, so binary strings (the
  project's path keys are ``string`` attributes) reach the wire exactly.

:class:`PairCodec` converts with the project's dictionaries (the pyrad
:class:`~pyrad.dictionary.Dictionary` of :func:`aaa_vpn.wire.radius.load_dictionary`),
which define the same names as FreeRADIUS's (docs/radius-attributes.md).
Salt-encrypted values (``encrypt=2``, RFC 2868 section 3.5) come out of the
home AAA encrypted; :meth:`PairCodec.reply_pairs` decrypts those that
FreeRADIUS encrypts again itself, with its own client's secret and the real
Request Authenticator, and leaves the others as they are (see
:data:`PLAIN_IN_FREERADIUS`).

Errors: :class:`PairError` (a ``ValueError``) for a pair that cannot be
converted. Pure: no sockets, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from aaa_vpn.wire import radius as rc

if TYPE_CHECKING:  # pyrad has no type hints
    from pyrad.dictionary import Dictionary

Pair = tuple[str, str]

#: Attributes the project's dictionaries salt-encrypt (``encrypt=2``) but
#: FreeRADIUS 3.2's own dictionaries define without encryption, so that
#: FreeRADIUS would send a decrypted value in clear: 3GPP2-Pre-Shared-Secret
#: (``string``, no flag, in /usr/share/freeradius/dictionary.3gpp2; see
#: aaa_vpn/dictionaries/dictionary.3gpp2). They are handed to FreeRADIUS as
#: the home AAA encrypted them (tests/test_freeradius_module.py checks this set
#: against the installed dictionaries).
PLAIN_IN_FREERADIUS = frozenset({"3GPP2-Pre-Shared-Secret"})

_INTEGER_TYPES = {"integer": 4, "short": 2, "byte": 1, "signed": 4, "integer64": 8}
_ESCAPED_CONTROL = {"r": 0x0D, "n": 0x0A, "t": 0x09}
_NAME = re.compile(r"^(?P<name>[A-Za-z0-9.+_-]+?)(?::(?P<tag>\d+))?$")
_OCTAL = re.compile(r"[0-7]{3}")


class PairError(ValueError):
    """A value pair that cannot be converted (its name, tag or value)."""


@dataclass(frozen=True)
class Definition:
    """One attribute as a dictionary defines it."""

    name: str
    vendor: int
    """0 for a standard attribute."""
    code: int
    type: str
    has_tag: bool = False
    encrypt: int = 0
    values: Mapping[str, int] = field(default_factory=dict)
    """VALUE names -> numbers."""
    names: Mapping[int, str] = field(default_factory=dict)
    """Numbers -> VALUE names."""


def unescape_printed(text: str | bytes) -> bytes:
    """The octets of a string value as rlm_python3 printed it (module doc)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):
            nxt = chr(raw[i + 1])
            if nxt in _ESCAPED_CONTROL:
                out.append(_ESCAPED_CONTROL[nxt])
                i += 2
                continue
            digits = raw[i + 1 : i + 4].decode("ascii", "replace")
            if _OCTAL.fullmatch(digits):
                out.append(int(digits, 8) & 0xFF)
                i += 4
                continue
        out.append(c)
        i += 1
    return bytes(out)


#: Each octet as :func:`escape_string` writes it.
_ESCAPED = tuple(
    "\\\\" if octet == 0x5C else chr(octet) if 0x20 <= octet <= 0x7E else f"\\{octet:03o}" for octet in range(256)
)
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")


def escape_string(value: bytes) -> str:
    """``value`` as FreeRADIUS reads a double-quoted string (module doc)."""
    if _PLAIN.fullmatch(value):
        return value.decode("ascii")
    return "".join(map(_ESCAPED.__getitem__, value))


def definitions(dictionary: Dictionary) -> list[Definition]:
    """Every attribute a pyrad dictionary defines."""
    found = []
    for name, attribute in dictionary.attributes.items():
        vendor = dictionary.vendors.GetForward(attribute.vendor) if attribute.vendor else 0
        values = {value_name: int.from_bytes(raw, "big") for value_name, raw in attribute.values.forward.items()}
        found.append(
            Definition(
                name=name,
                vendor=vendor,
                code=attribute.code,
                type=attribute.type,
                has_tag=bool(attribute.has_tag),
                encrypt=int(attribute.encrypt or 0),
                values=values,
                names={v: k for k, v in values.items()},
            )
        )
    return found


class PairCodec:
    """Converts pairs with the definitions of one dictionary (module doc)."""

    def __init__(self, known: Iterable[Definition]) -> None:
        known = list(known)
        self.by_name: dict[str, Definition] = {d.name: d for d in known}
        self.by_key: dict[tuple[int, int], Definition] = {(d.vendor, d.code): d for d in known}
        self.vendors = frozenset(d.vendor for d in known if d.vendor)

    @classmethod
    def from_dictionary(cls, dictionary: Dictionary) -> PairCodec:
        return cls(definitions(dictionary))

    # -- FreeRADIUS -> RADIUS ---------------------------------------------------------------------
    def definition(self, name: str) -> tuple[Definition, int] | None:
        """The definition a pair's name refers to and its tag (0: none); None if unknown."""
        match = _NAME.match(name)
        if match is None:
            return None
        definition = self.by_name.get(match["name"])
        if definition is None:
            return None
        tag = int(match["tag"]) if match["tag"] is not None else 0
        if tag and not definition.has_tag:
            raise PairError(f"{name}: {definition.name} takes no tag")
        if tag > 0x1F:
            raise PairError(f"{name}: a tag is 1..31 (RFC 2868 section 3)")
        return definition, tag

    def value_octets(self, definition: Definition, tag: int, text: str | bytes) -> bytes:
        """The value of an attribute on the wire (tag included), from its printed form."""
        what = definition.name
        kind = definition.type
        if isinstance(text, bytes) and kind != "string":
            text = text.decode("utf-8", "replace")
        if kind in _INTEGER_TYPES:
            assert isinstance(text, str)
            number = _integer(definition, text)
            width = _INTEGER_TYPES[kind]
            if definition.has_tag:
                if not 0 <= number < 1 << 24:
                    raise PairError(f"{what} = {number}: a tagged integer holds 24 bits (RFC 2868 section 3)")
                return bytes((tag,)) + number.to_bytes(3, "big")
            signed = kind == "signed"
            try:
                return number.to_bytes(width, "big", signed=signed)
            except OverflowError:
                raise PairError(f"{what} = {number} does not fit in {width} octets") from None
        if kind == "ipaddr":
            assert isinstance(text, str)
            try:
                return IPv4Address(text.strip()).packed
            except ValueError:
                raise PairError(f"{what} = {text!r} is not an IPv4 address") from None
        if kind == "octets":
            assert isinstance(text, str)
            if not text.startswith("0x"):
                raise PairError(f"{what}: octets are printed as 0x and hex, got {text[:20]!r}")
            try:
                value = bytes.fromhex(text[2:])
            except ValueError:
                raise PairError(f"{what} = {text[:20]!r}...: not hex") from None
            return (bytes((tag,)) if definition.has_tag and tag else b"") + value
        if kind == "string":
            value = unescape_printed(text)
            return (bytes((tag,)) if definition.has_tag and tag else b"") + value
        raise PairError(f"{what}: values of type {kind} are not converted")

    def attribute(self, name: str, text: str | bytes) -> bytes | None:
        """One complete RADIUS attribute (Vendor-Specific wrapped) for a pair;
        None for a name the dictionary does not know."""
        found = self.definition(name)
        if found is None:
            return None
        definition, tag = found
        value = self.value_octets(definition, tag, text)
        limit = rc.MAX_VSA_VALUE if definition.vendor else rc.MAX_ATTRIBUTE_VALUE
        if len(value) > limit:
            raise PairError(f"{definition.name}: {len(value)} octets do not fit one attribute")
        if definition.vendor:
            return rc.vendor_attribute(definition.vendor, definition.code, value)
        return rc.attribute(definition.code, value)

    # -- RADIUS -> FreeRADIUS ---------------------------------------------------------------------
    def reply_pairs(
        self,
        attributes: bytes,
        secret: bytes,
        request_authenticator: bytes,
        *,
        skip: Iterable[int] = (rc.MESSAGE_AUTHENTICATOR_TYPE, rc.PROXY_STATE),
        plain_in_freeradius: frozenset[str] = PLAIN_IN_FREERADIUS,
    ) -> list[Pair]:
        """The pairs for FreeRADIUS's reply list from a reply's raw attribute
        section, in order. Salt-encrypted values are decrypted with ``secret``
        and ``request_authenticator`` (what they were encrypted with), except
        those in ``plain_in_freeradius``, which stay encrypted. Standard
        attributes in ``skip`` are left out."""
        skipped = frozenset(skip)
        pairs: list[Pair] = []
        for vendor, code, value in rc.iter_attributes(attributes, self.vendors):
            if vendor == 0 and code in skipped:
                continue
            definition = self.by_key.get((vendor, code))
            if definition is None:
                name = f"Attr-26.{vendor}.{code}" if vendor else f"Attr-{code}"
                pairs.append((name, "0x" + value.hex()))
                continue
            pairs.append(self._reply_pair(definition, value, secret, request_authenticator, plain_in_freeradius))
        return pairs

    @staticmethod
    def _reply_pair(
        definition: Definition,
        value: bytes,
        secret: bytes,
        authenticator: bytes,
        plain_in_freeradius: frozenset[str],
    ) -> Pair:
        what = definition.name
        kind = definition.type
        tag = 0
        if definition.has_tag and kind in _INTEGER_TYPES:
            if len(value) != 4:
                raise PairError(f"{what}: a tagged integer is 4 octets, got {len(value)}")
            tag, value = value[0], b"\x00" + value[1:]
        elif definition.has_tag and value and 0 < value[0] <= 0x1F:
            tag, value = value[0], value[1:]
        name = f"{what}:{tag}" if tag else what
        if definition.encrypt == 2 and what not in plain_in_freeradius:
            try:
                value = rc.salt_decrypt(value, secret, authenticator)
            except rc.RadiusDecodeError as exc:
                raise PairError(f"{what}: {exc}") from None
        if kind in _INTEGER_TYPES:
            return name, str(int.from_bytes(value, "big", signed=kind == "signed"))
        if kind == "ipaddr":
            if len(value) != 4:
                raise PairError(f"{what}: an IPv4 address is 4 octets, got {len(value)}")
            return name, str(IPv4Address(value))
        if kind == "string":
            return name, escape_string(value)
        return name, "0x" + value.hex()


def _integer(definition: Definition, text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text.startswith("-") and text[1:].isdigit() and definition.type == "signed":
        return int(text)
    number = definition.values.get(text)
    if number is None:
        raise PairError(f"{definition.name} = {text!r}: neither a number nor one of its VALUE names")
    return number


def pairs_of(value: Any) -> list[Pair]:
    """The ``(name, value)`` pairs of one list as rlm_python3 passes it (a
    tuple of 2-tuples, or None for an absent list); anything else is skipped."""
    if not isinstance(value, tuple):
        return []
    found: list[Pair] = []
    for item in value:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            text = item[1]
            if isinstance(text, bytes):
                text = text.decode("utf-8", "surrogateescape")
            if isinstance(text, str):
                found.append((item[0], text))
    return found


__all__ = [
    "PLAIN_IN_FREERADIUS",
    "Definition",
    "Pair",
    "PairCodec",
    "PairError",
    "definitions",
    "escape_string",
    "pairs_of",
    "unescape_printed",
]
