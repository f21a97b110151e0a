"""Record commands made from declarations: a :class:`Kind` per kind of record
gives its group ``add``, ``list``, ``show``, ``change`` and ``delete``.

A kind says what its records are (the model's dataclass, the store's methods,
the JSON form), which argument names one (:class:`Key`), and how each field
is given on the command line (:class:`Field`: flag, help, type, parser); the
commands are generated from that, and behave alike for every kind:

- ``add KEY``: an option per field, required ones marked, defaults the
  record's own; then the secret options (``--X``, ``--X-hex``, ``--X-file``,
  ``--generate-X``, ``--generate``, ``--show-secret``). Secrets are read
  first, then the fields in order; the record validates itself.
- ``change KEY``: the same options, none required: a field not given keeps
  its value; a field that may be empty has ``--no-X`` to empty it.
- ``list`` (with a filter where the kind has one) and ``show KEY``:
  ``--show-secrets`` where records hold secrets.
- ``delete KEY``.
- Each prints one line (a table for ``list``, the record for ``show``), or one
  JSON document with ``--json``; a generated secret is shown only with
  ``--show-secret``.
- ``add``, ``change`` and ``delete`` append an entry to the audit log in the
  change's own transaction (``cli:<login>``, never a secret; docs/api.md).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from aaa_vpn.cli.common import (
    App,
    InvalidInput,
    SecretSpec,
    audit,
    emit,
    emit_table,
    example,
    pass_app,
    report_generated,
    required_secret,
    secret_from_options,
    secret_options,
    with_options,
)
from aaa_vpn.secret import Secret
from aaa_vpn.service.provisioning import AUDIT_NAMES
from aaa_vpn.store import SqlStore
from aaa_vpn.store.transfer import JsonObject


@dataclass(frozen=True)
class Field:
    """One field of a record as the command line gives it."""

    name: str
    """The record's field, and the option's parameter name."""
    flag: str
    """``--home-agent``; a boolean: ``--enable/--disable``."""
    help: str = ""
    metavar: str | None = None
    type: Any = None
    """The click type (default: text)."""
    parse: Callable[[Any], Any] | None = None
    """The option's value as the field's; raises ValidationError."""
    required: bool = False
    """Required by ``add``."""
    multiple: bool = False
    """Repeatable; on ``change`` it replaces the whole list."""
    shown_default: str | None = None
    """``add``: what happens without it, when the record's default does not say."""
    clear: tuple[str, str] | None = None
    """``change``: a flag that empties the field, and its help."""
    add_flag: tuple[str, str] | None = None
    """``add``: a boolean given as one flag that turns its default off, and its help."""
    change_help: str | None = None
    on_change: bool = True

    def value(self, given: Any) -> Any:
        """The field's value from its option's (given) value."""
        return given if self.parse is None else self.parse(given)

    def option(self, help_text: str, default: Any = None, **how: Any) -> Callable[[Any], Any]:
        """Its option, with ``help_text``; without a ``default`` its value is None when not given."""
        if default is not None or "/" in self.flag:
            how["default"] = default  # a --x/--no-x switch would be False, not None, without one
        return click.option(
            self.flag,
            self.name,
            type=self.type,
            metavar=self.metavar,
            multiple=self.multiple,
            help=help_text or None,
            **how,
        )

    def add_option(self, default: Any) -> Callable[[Any], Any]:
        """The option of ``add``, given the record's default for the field."""
        if self.add_flag is not None:
            flag, help_text = self.add_flag
            return click.option(flag, self.name, is_flag=True, help=help_text)
        if isinstance(default, enum.Enum):
            default = default.value
        if self.required or self.multiple:
            default = None
        return self.option(
            self.help,
            required=self.required,
            default=default,
            show_default=self.shown_default or default not in (None, ""),
        )

    def added(self, options: Mapping[str, Any], default: Any) -> dict[str, Any]:
        """What ``add`` sets this field to: nothing (the record's default) when not given."""
        given = options[self.name]
        if self.add_flag is not None:
            return {self.name: not default} if given else {}
        return {self.name: self.value(given)} if _given(given) else {}

    def change_options(self) -> list[Callable[[Any], Any]]:
        """The options of ``change``."""
        options = [self.option(self.change_help or self.help)]
        if self.clear is not None:
            flag, help_text = self.clear
            options.append(click.option(flag, self._clear_param, is_flag=True, help=help_text))
        return options

    @property
    def _clear_param(self) -> str:
        return f"clear_{self.name}"

    def changed(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """What ``change`` sets this field to: nothing when not given."""
        given = options.get(self.name)
        if self.clear is not None and options.get(self._clear_param):
            if _given(given):
                raise InvalidInput(f"give {self.flag} or {self.clear[0]}, not both")
            return {self.name: None}
        return {self.name: self.value(given)} if _given(given) else {}


def _given(value: Any) -> bool:
    """Whether an option without a default was given (a repeatable one: at least once)."""
    return value is not None and value != ()


@dataclass(frozen=True)
class Key:
    """The argument that names one record."""

    name: str
    """The record's field (and the parameter's name)."""
    metavar: str
    type: Any = str
    on_add: bool = True
    """False: the store assigns it (``add`` has no argument)."""


@dataclass(frozen=True)
class Kind:
    """A kind of record and everything its commands need."""

    group: str
    """The command group: ``aaa-vpn <group> add ...``."""
    help: str
    label: str
    """How messages name it: ``added <label> <key>``."""
    titles: tuple[str, str]
    """How ``--help`` names one and several: ("mobile user", "users")."""
    record: type[Any]
    key: Key
    store: str
    """The store's methods: ``add_<store>``, ``get_``, ``update_``, ``delete_``;
    also the key of ``{"deleted": {<store>: KEY}}``."""
    table: str
    """The JSON key of ``list``."""
    list_records: Callable[[SqlStore, Any], Sequence[Any]]
    """The records ``list`` shows, given its filter's value (None without one)."""
    to_json: Callable[..., JsonObject]
    fields: tuple[Field, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    """Secrets ``add`` requires and ``change`` may replace (the option's
    parameter is the record's field)."""
    shown_secrets: tuple[str, ...] | None = None
    """What ``--show-secrets`` adds; default: the secrets' labels; empty: no such option."""
    list_filter: Field | None = None
    show_extra: Callable[[SqlStore, Any, bool], JsonObject] | None = None
    """More for ``show``: (store, record, with secrets) -> entries."""
    commands: tuple[str, ...] = ("add", "list", "show", "change", "delete")
    sample: str = ""
    """An example key, for the examples."""
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Examples per command (``add`` and ``change`` need theirs), and for the group."""
    docs: Mapping[str, str] = field(default_factory=dict)
    """Help per command, where the generated one is not enough."""

    def __post_init__(self) -> None:
        # The store's methods are found by name: a renamed one fails here, at import.
        verbs = {"add": ("add",), "show": ("get",), "change": ("get", "update"), "delete": ("delete",)}
        for command in self.commands:
            for verb in verbs.get(command, ()):
                if not callable(getattr(SqlStore, f"{verb}_{self.store}", None)):
                    raise TypeError(f"the store has no {verb}_{self.store} for '{self.group} {command}'")

    @property
    def secret_labels(self) -> tuple[str, ...]:
        if self.shown_secrets is not None:
            return self.shown_secrets
        return tuple(spec.label for spec in self.secrets)

    def json(self, record: Any, with_secrets: bool = False) -> JsonObject:
        if self.secret_labels:
            return self.to_json(record, with_secrets=with_secrets)
        return self.to_json(record)

    def method(self, store: SqlStore, verb: str) -> Callable[..., Any]:
        method: Callable[..., Any] = getattr(store, f"{verb}_{self.store}")
        return method

    def doc(self, command: str) -> str:
        one, several = self.titles
        generated = {
            "add": f"Add a {one}.",
            "list": f"List the {several}.",
            "show": f"Show one {one}.",
            "change": f"Change a {one}; options not given keep their value.",
            "delete": f"Delete a {one}.",
        }
        return self.docs.get(command, generated[command])

    def example(self, command: str) -> str:
        generated = {
            "group": (f"aaa-vpn {self.group} list",),
            "list": (f"aaa-vpn {self.group} list",),
            "show": (f"aaa-vpn {self.group} show {self.sample}",),
            "delete": (f"aaa-vpn {self.group} delete {self.sample}",),
        }
        lines = self.examples.get(command) or generated[command]
        return example(*lines)


def record_defaults(record: type[Any]) -> dict[str, Any]:
    """The defaults of a record's fields: the defaults of ``add``."""
    return {f.name: f.default for f in dataclasses.fields(record) if f.default is not dataclasses.MISSING}


def kind_group(kind: Kind) -> click.Group:
    """The command group of ``kind``, with its generated commands."""
    group = click.Group(kind.group, help=kind.help, epilog=kind.example("group"))
    for name in kind.commands:
        command = _MAKERS[name](kind)
        command.help = kind.doc(name)
        command.epilog = kind.example(name)
        group.add_command(command)
    return group


def _key_argument(kind: Kind) -> Callable[[Any], Any]:
    return click.argument(kind.key.name, metavar=kind.key.metavar, type=kind.key.type)


def _show_secrets(kind: Kind, several: bool) -> list[Callable[[Any], Any]]:
    if not kind.secret_labels:
        return []
    what = " and ".join(f"{label}s" if several else label for label in kind.secret_labels)
    return [click.option("--show-secrets", is_flag=True, help=f"Include the {what}.")]


def _add(kind: Kind) -> click.Command:
    def add(app: App, /, **options: Any) -> None:
        generated: dict[str, Secret] = {}
        values = {spec.param: required_secret(spec, options, generated) for spec in kind.secrets}
        if kind.key.on_add:
            values[kind.key.name] = options[kind.key.name]
        for one in kind.fields:
            values.update(one.added(options, defaults.get(one.name)))
        record = kind.record(**values)
        store = app.store()
        with store.transaction():
            stored = kind.method(store, "add")(record) or record
            document = kind.json(stored)
            _audit(store, kind, "add", getattr(stored, kind.key.name), document, [s.label for s in kind.secrets])
        report_generated(app, generated, bool(options.get("show_secret")), document)
        emit(app, document, f"added {kind.label} {getattr(stored, kind.key.name)}")

    defaults = record_defaults(kind.record)
    decorators = [_key_argument(kind)] if kind.key.on_add else []
    decorators += [one.add_option(defaults.get(one.name)) for one in kind.fields]
    decorators += secret_options(*kind.secrets)
    return click.command("add")(with_options(decorators)(pass_app(add)))


def _list(kind: Kind) -> click.Command:
    def list_(app: App, /, **options: Any) -> None:
        show = bool(options.get("show_secrets"))
        chosen = options.get(kind.list_filter.name) if kind.list_filter is not None else None
        records = kind.list_records(app.store(), chosen)
        emit_table(app, kind.table, [kind.json(record, show) for record in records])

    decorators = [kind.list_filter.option(kind.list_filter.help)] if kind.list_filter is not None else []
    decorators += _show_secrets(kind, several=True)
    return click.command("list")(with_options(decorators)(pass_app(list_)))


def _show(kind: Kind) -> click.Command:
    def show(app: App, /, **options: Any) -> None:
        store = app.store()
        with_secrets = bool(options.get("show_secrets"))
        record = kind.method(store, "get")(options[kind.key.name])
        document = kind.json(record, with_secrets)
        if kind.show_extra is not None:
            document.update(kind.show_extra(store, record, with_secrets))
        emit(app, document)

    return click.command("show")(
        with_options([_key_argument(kind), *_show_secrets(kind, several=False)])(pass_app(show))
    )


def _change(kind: Kind) -> click.Command:
    def change(app: App, /, **options: Any) -> None:
        store = app.store()
        key = options[kind.key.name]
        old = kind.method(store, "get")(key)
        generated: dict[str, Secret] = {}
        changes: dict[str, Any] = {}
        for spec in kind.secrets:
            secret = secret_from_options(spec, options, generated)
            if secret is not None:
                changes[spec.param] = secret
        for one in kind.fields:
            if one.on_change:
                changes.update(one.changed(options))
        record = dataclasses.replace(old, **changes)
        with store.transaction():
            kind.method(store, "update")(record)
            document = kind.json(record)
            given = [spec.label for spec in kind.secrets if spec.param in changes]
            _audit(store, kind, "change", key, document, given)
        report_generated(app, generated, bool(options.get("show_secret")), document)
        emit(app, document, f"changed {kind.label} {key}")

    decorators = [_key_argument(kind)]
    for one in kind.fields:
        decorators += one.change_options() if one.on_change else []
    decorators += secret_options(*kind.secrets)
    return click.command("change")(with_options(decorators)(pass_app(change)))


def _delete(kind: Kind) -> click.Command:
    def delete(app: App, /, **options: Any) -> None:
        key = options[kind.key.name]
        store = app.store()
        with store.transaction():
            kind.method(store, "delete")(key)
            _audit(store, kind, "delete", key, {}, [])
        emit(app, {"deleted": {kind.store: key}}, f"deleted {kind.label} {key}")

    return click.command("delete")(with_options([_key_argument(kind)])(pass_app(delete)))


def _audit(store: SqlStore, kind: Kind, verb: str, key: Any, document: JsonObject, secrets_set: list[str]) -> None:
    """The change in the audit log, as the API writes it: the record without
    its secrets, and which secrets were set (labels only)."""
    detail = {**document, "secrets_set": sorted(secrets_set)} if secrets_set else document
    audit(store, f"{AUDIT_NAMES.get(kind.store, kind.table)}.{verb}", str(key), detail)


_MAKERS: dict[str, Callable[[Kind], click.Command]] = {
    "add": _add,
    "list": _list,
    "show": _show,
    "change": _change,
    "delete": _delete,
}
