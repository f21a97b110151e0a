"""A wrapper for secret bytes that never shows its value.

Shared secrets, keys and pre-shared keys travel through the code base as
:class:`Secret`: ``repr`` and ``str`` redact the value, equality is constant
time (``hmac.compare_digest``), and the raw bytes are reached only through the
explicit :attr:`Secret.value` attribute.
"""

from __future__ import annotations

import hmac


class Secret:
    """Secret bytes with a redacted ``repr`` and constant-time equality."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | str) -> None:
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"Secret takes bytes or str, not {type(value).__name__}")
        self._value = bytes(value)

    @property
    def value(self) -> bytes:
        """The raw secret bytes. Every use of this is a place a secret leaves."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return hmac.compare_digest(self._value, other._value)
        return NotImplemented

    def __hash__(self) -> int:
        # Hash on the length only: equal secrets hash equal, and the hash
        # reveals nothing a repr would not.
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> tuple[type[Secret], tuple[bytes]]:
        return (Secret, (self._value,))
