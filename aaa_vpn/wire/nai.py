"""The Network Access Identifier (RFC 7542): the one syntax the model, the
command line and the codecs agree on.

A mobile user's NAI names their record in the VPN database, rides in the
RADIUS User-Name (RFC 2865 section 5.1) and in the Mobile IP NAI extension
(RFC 2794 section 2), and its realm routes requests between domains. The
rules, each with its reason:

1. ``utf8-username "@" utf8-realm`` of RFC 7542 section 2.2, UTF-8 allowed in
   both parts: the username is dot-separated runs of letters, digits, the
   ASCII specials ``!#$%&'*+-/=?^_`{|}~`` and any non-ASCII character; the
   realm is at least two dot-separated labels of letters, digits and
   non-ASCII characters with inner hyphens (``home.example``,
   ``bücher.example``). The realm is required: requests are routed by it
   (RFC 7542 section 3) and a user record must be reachable from a visited
   domain. A NAI thus holds exactly one ``@``.
2. At most :data:`MAX_NAI_OCTETS` (253) octets of UTF-8: the RADIUS
   User-Name's limit (RFC 2865 section 5; RFC 7542 section 2.3), below the
   Mobile IP NAI extension's 255. A longer NAI could be provisioned but
   never sent.
3. In Unicode Normalization Form C (RFC 7542 sections 2.1 and 2.6 ask for
   NFC): the home AAA looks users up by the exact string, so two encodings of
   one name must not both exist. A NAI not in NFC is refused, not silently
   normalized: a node configured with the other form would then never match.
4. No invisible, control or layout characters: Unicode categories Cc, Cf,
   Cs, Co, Cn, Zs, Zl and Zp (a zero-width space or a right-to-left override
   makes two NAIs look alike and hides in logs). The grammar admits them as
   ``UTF8-xtra-char``; this project does not.

Realms compare case-insensitively (:func:`nai_realm` folds them with
``str.lower``, which leaves IDNA-distinct letters such as ``ß`` alone); the
username is compared exactly.

The codecs carry any UTF-8 User-Name of 1..253 octets (a peer's NAI that
breaks rules 1, 3 or 4 names no user and is answered as unknown); every NAI
these rules accept fits both codecs.
"""

from __future__ import annotations

import string
import unicodedata

from aaa_vpn.wire.radius import MAX_ATTRIBUTE_VALUE

#: The longest NAI in UTF-8 octets: one RADIUS attribute value (RFC 2865 section 5).
MAX_NAI_OCTETS = MAX_ATTRIBUTE_VALUE

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_RTEXT = frozenset(string.ascii_letters + string.digits)
#: Unicode categories refused anywhere in a NAI (rule 4).
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def _atext(char: str) -> bool:
    return char in _ATEXT or ord(char) > 0x7F


def _rtext(char: str) -> bool:
    return char in _RTEXT or ord(char) > 0x7F


def _invisible(text: str) -> str | None:
    for char in text:
        if ord(char) > 0x7E or ord(char) < 0x21:
            category = unicodedata.category(char)
            if category in _INVISIBLE:
                return f"it holds U+{ord(char):04X}, an invisible, control or layout character (category {category})"
    return None


def realm_problem(realm: str) -> str | None:
    """Why ``realm`` is not a ``utf8-realm`` (RFC 7542 section 2.2), or None."""
    if not isinstance(realm, str) or not realm:
        return "the realm is empty"
    problem = _invisible(realm)
    if problem is not None:
        return problem
    labels = realm.split(".")
    if len(labels) < 2:
        return f"the realm {realm!r} needs at least two labels, e.g. home.example (RFC 7542 section 2.2)"
    for label in labels:
        if not label:
            return f"the realm {realm!r} has an empty label"
        if not (_rtext(label[0]) and _rtext(label[-1]) and all(_rtext(c) or c == "-" for c in label)):
            return f"the realm label {label!r} is not letters, digits and inner hyphens (RFC 7542 section 2.2)"
    return None


def nai_problem(nai: str) -> str | None:
    """Why ``nai`` breaks the module rules, or None if it is a NAI."""
    if not isinstance(nai, str):
        return f"a NAI is a string, not {type(nai).__name__}"
    problem = _invisible(nai)
    if problem is not None:
        return problem
    size = len(nai.encode("utf-8"))
    if size > MAX_NAI_OCTETS:
        return (
            f"it is {size} octets of UTF-8; a NAI is at most {MAX_NAI_OCTETS}, the RADIUS User-Name's limit"
            " (RFC 2865 section 5)"
        )
    if not unicodedata.is_normalized("NFC", nai):
        return (
            "it is not in Unicode Normalization Form C (RFC 7542 section 2.6); the same NAI in NFC is"
            f" {unicodedata.normalize('NFC', nai)!r}"
        )
    username, at, realm = nai.partition("@")
    if not at or not username:
        return "expected user@realm (RFC 7542 section 2.2), e.g. mn1@home.example"
    for part in username.split("."):
        if not part:
            return "the username has an empty part between dots, or starts or ends with a dot"
        bad = next((c for c in part if not _atext(c)), None)
        if bad is not None:
            return f"the username holds {bad!r}, which RFC 7542 section 2.2 does not allow"
    return realm_problem(realm)


def nai_realm(nai: str) -> str:
    """The realm part of a NAI, lower-cased (realms compare case-insensitively)."""
    return nai.rpartition("@")[2].lower()


__all__ = ["MAX_NAI_OCTETS", "nai_problem", "nai_realm", "realm_problem"]
