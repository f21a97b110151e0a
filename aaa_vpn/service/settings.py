"""Settings declared once: each field of a settings dataclass says how it is given.

A settings dataclass (:class:`~aaa_vpn.service.agent_config.AgentSettings`,
:class:`~aaa_vpn.service.config.HomeServerSettings`, ...) declares each field
with :func:`setting`: its default, its help text, its command-line flag, its
key in the TOML file, the values it accepts and how a text becomes its value.
From these declarations

* the command line (:mod:`aaa_vpn.cli.options`) generates its click options,
  with their types, ranges, choices and shown defaults;
* the TOML readers take their schemas (which keys, of which TOML type) and
  their conversions (:class:`TomlReader`);
* the dataclasses' ``__post_init__`` checks each value (:func:`check_declared`),
  so a value from any source meets the same rule with the same message.

This module knows nothing of click: the service layer does not depend on the
command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from aaa_vpn.model import MIN_SHARED_SECRET, ValidationError
from aaa_vpn.secret import Secret
from aaa_vpn.secret_files import SecretForm, read_secret_file

#: Where a value comes from, for error messages: a flag (``--address``) or
#: ``config file PATH: KEY``.
Where = str


@dataclass(frozen=True)
class Bounds:
    """A number's range; the error reads ``invalid <what> <value>[: <rule>]``."""

    what: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    rule: str = ""
    """How the error states the range; empty: the error names only the value."""

    def check(self, value: float) -> None:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise ValidationError(f"invalid {self.what} {value}" + (f": {self.rule}" if self.rule else ""))


@dataclass(frozen=True)
class Choices:
    """A closed set of words; the error reads ``invalid <what> 'x': one of a, b``."""

    what: str
    values: tuple[str, ...]
    verb: str = "invalid"

    def check(self, value: str) -> None:
        if value not in self.values:
            raise ValidationError(f"{self.verb} {self.what} {value!r}: one of {', '.join(self.values)}")


@dataclass(frozen=True)
class Setting:
    """How one setting is given (the metadata of its dataclass field)."""

    help: str = ""
    """One sentence for ``--help`` and the documentation; never the default
    (``--help`` shows that from the field's default)."""
    flag: str | None = None
    """Its command-line option, e.g. ``--mip-port``; None: only in the file."""
    metavar: str | None = None
    toml: str | bool = True
    """Its key in the TOML file: True for the field's own name, a string for
    another key, False for none."""
    kind: type | None = None
    """What is written: int, float, str, bool or Path (a file name, relative
    to the TOML file); default: the type of the field's default."""
    multiple: bool = False
    """Repeatable option, TOML array."""
    check: Bounds | Choices | None = None
    roles: tuple[str, ...] = ()
    """Agents: the roles that have it; empty: every role."""
    parse: Callable[[Where, Any], Any] | None = None
    """Turns one written value (of ``kind``) into the field's value (or an
    item of it); raises ValidationError naming ``where``."""
    collect: Callable[[Iterable[Any]], Any] = tuple
    """Multiple: turns the parsed items into the field's value."""
    from_file: Callable[[TomlReader, str, Any], Any] | None = None
    """A TOML value that is more than a list of ``kind`` (tables): reads it whole."""
    shown_default: str | None = None
    """What ``--help`` shows as the default when the field's default is not
    what the operator gets (e.g. "number of CPUs")."""
    cli_default: Callable[[], Any] | None = None
    """The command line's default when it differs from the field's (computed at run time)."""


def setting(default: Any = dataclasses.MISSING, *, secret: bool = False, **how: Any) -> Any:
    """A dataclass field with its :class:`Setting`: ``port: int = setting(1812, flag="--port", ...)``;
    a ``secret`` one is left out of the dataclass's repr."""
    return dataclasses.field(default=default, repr=not secret, metadata={"setting": Setting(**how)})


@dataclass(frozen=True)
class Declared:
    """One declared setting: its name (the field's), how it is given, its default."""

    name: str
    setting: Setting
    default: Any = None
    kind: type = str

    @property
    def toml_key(self) -> str | None:
        toml = self.setting.toml
        if toml is True:
            return self.name
        return toml or None

    def for_role(self, role: str | None) -> bool:
        return role is None or not self.setting.roles or role in self.setting.roles

    @property
    def toml_type(self) -> type | tuple[type, ...]:
        """The TOML type the file must give."""
        if self.setting.from_file is not None or self.setting.multiple:
            return list
        return self.item_type

    @property
    def item_type(self) -> type | tuple[type, ...]:
        """The TOML type of the value, or of each item of a multiple one."""
        if self.kind is float:
            return (int, float)  # TOML writes 2 for 2.0
        return str if self.kind is Path else self.kind

    def convert(self, where: Where, value: Any) -> Any:
        """One written value (of ``kind``) as the field's value, or as an item of it (multiple)."""
        if self.kind is float:
            value = float(value)
        return value if self.setting.parse is None else self.setting.parse(where, value)

    def collect(self, items: Iterable[Any]) -> Any:
        """Multiple: the converted items as the field's value."""
        return self.setting.collect(items)

    def from_option(self, value: Any) -> Any:
        """The field's value from its command-line option's value (a tuple if multiple)."""
        flag = self.setting.flag or self.name
        if self.setting.multiple:
            return self.collect(self.convert(flag, one) for one in value)
        return self.convert(flag, value)


def declared(cls: type) -> tuple[Declared, ...]:
    """The declared settings of a settings dataclass, in field order."""
    found = []
    for field in dataclasses.fields(cls):
        how = field.metadata.get("setting")
        if how is None:
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        kind = how.kind or (type(default) if default is not None and not how.multiple else str)
        found.append(Declared(field.name, how, default, kind))
    return tuple(found)


def check_declared(settings: object) -> None:
    """Check every declared value of ``settings`` against its rule (for ``__post_init__``)."""
    for item in declared(type(settings)):
        value = getattr(settings, item.name)
        if item.setting.check is not None and value is not None:
            item.setting.check.check(value)


# -- written values -------------------------------------------------------------------------------


def parse_ipv4(what: str, value: str) -> IPv4Address:
    """An IPv4 address literal, or a ValidationError naming ``what``."""
    try:
        address = ip_address(value.strip())
    except ValueError:
        raise ValidationError(f"{what}: {value!r} is not an IP address") from None
    if not isinstance(address, IPv4Address):
        raise ValidationError(f"{what}: {value!r}: only IPv4 is supported")
    return address


def parse_endpoint(what: str, value: str, default_port: int) -> tuple[IPv4Address, int]:
    """``ADDR`` or ``ADDR:PORT``."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep:
        host, port_text = value.strip(), ""
    address = parse_ipv4(what, host)
    if not port_text:
        return address, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValidationError(f"{what}: {value!r}: the port is not a number") from None
    if not 1 <= port <= 65535:
        raise ValidationError(f"{what}: {value!r}: the port must be 1..65535")
    return address, port


_TOML_TYPES = {dict: "table", list: "array", str: "string", bool: "boolean", int: "integer", float: "float"}


def _type(value: object) -> str:
    return _TOML_TYPES.get(type(value), type(value).__name__)


class TomlReader:
    """Reads one TOML file's values; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inline_secrets = False

    def where(self, key: str) -> Where:
        return f"config file {self.path}: {key}"

    def error(self, key: str, message: str) -> ValidationError:
        return ValidationError(f"{self.where(key)}: {message}")

    def table(self, value: object, key: str, schema: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
        """``value`` as a table whose keys are all in ``schema``, each of its type."""
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {_type(value)}")
        for name, item in value.items():
            expected = schema.get(name)
            where = f"{key}.{name}" if key else name
            if expected is None:
                known = ", ".join(sorted(schema))
                raise ValidationError(f"config file {self.path}: {where} is not a known setting (known: {known})")
            if (isinstance(item, bool) and expected is not bool) or not isinstance(item, expected):
                raise ValidationError(f"config file {self.path}: {where} has the wrong type ({_type(item)})")
        return value

    def required(self, table: Mapping[str, Any], name: str, key: str) -> Any:
        """``table[name]``, or an error naming ``key``."""
        if name not in table:
            raise self.error(key, f"{name} is required")
        return table[name]

    def shared_secret(self, table: Mapping[str, Any], key: str) -> Secret:
        """The RADIUS shared secret of ``table``: ``secret`` inline (the file
        must then be private: :attr:`inline_secrets`) or ``secret_file``,
        exactly one of them, at least :data:`~aaa_vpn.model.MIN_SHARED_SECRET` octets."""
        inline, file = table.get("secret"), table.get("secret_file")
        if (inline is None) == (file is None):
            raise self.error(key, "give exactly one of secret and secret_file")
        if inline is not None:
            self.inline_secrets = True
            value = Secret(str(inline))
        else:
            value = read_secret_file(self.file(str(file)), f"{self.where(key)}.secret_file", SecretForm.TEXT)
        if len(value) < MIN_SHARED_SECRET:
            raise self.error(
                key, f"the shared secret has {len(value)} octets; at least {MIN_SHARED_SECRET} are required"
            )
        return value

    def file(self, value: str) -> Path:
        """A file name from the file: relative ones are relative to it."""
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path

    def settings(self, data: object, items: Sequence[Declared]) -> dict[str, Any]:
        """The values ``data`` (the file's top table) gives for ``items``, by field name."""
        by_key = {item.toml_key: item for item in items if item.toml_key is not None}
        top = self.table(data, "", {key: item.toml_type for key, item in by_key.items()})
        values: dict[str, Any] = {}
        for key, value in top.items():
            item = by_key[key]
            values[item.name] = self.value(item, key, value)
        return values

    def value(self, item: Declared, key: str, value: Any) -> Any:
        """The field's value from the file's ``value`` at ``key`` (of the right TOML type)."""
        if item.setting.from_file is not None:
            return item.setting.from_file(self, key, value)
        if not item.setting.multiple:
            return item.convert(self.where(key), self._written(item, value))
        converted = []
        for index, element in enumerate(value):
            where = f"{key}[{index}]"
            expected = item.item_type
            if (isinstance(element, bool) and expected is not bool) or not isinstance(element, expected):
                raise self.error(
                    where, f"must be a {_TOML_TYPES[str if item.kind is Path else item.kind]}, not {_type(element)}"
                )
            converted.append(item.convert(self.where(where), self._written(item, element)))
        return item.collect(converted)

    def _written(self, item: Declared, value: Any) -> Any:
        return self.file(value) if item.kind is Path else value


__all__ = [
    "Bounds",
    "Choices",
    "Declared",
    "Setting",
    "TomlReader",
    "check_declared",
    "declared",
    "parse_endpoint",
    "parse_ipv4",
    "setting",
]
