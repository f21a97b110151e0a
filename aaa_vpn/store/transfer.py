"""Import and export of provisioning data as a JSON document (docs/import-format.md).

Also the one place that turns records into plain JSON values, so that
``aaa-vpn ... --json``, ``show`` and ``export`` agree on field names.

Rules:

- The document is an object with ``"format": "aaa-vpn"``, ``"version": 1`` and
  one list per record kind. Unknown fields are errors (they are typos).
- Secrets are objects ``{"hex": ...}`` or ``{"text": ...}``; export writes them
  only when asked, and always as hex (plus text when the bytes are printable).
- Import runs in one transaction: any bad record leaves the database untouched.
  Merge (default) adds new records and updates existing ones; replace also
  deletes what the document does not name. On merge a record without its
  secret keeps the stored one, so a secret-less export can be edited and
  re-imported.
- VPN records are identified by (user NAI, correspondent network); their
  numeric ids are local to a database and are not exported.
- Sessions are runtime state and are neither exported nor imported.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from ipaddress import IPv4Network
from typing import Any, Protocol, TypeVar

from aaa_vpn.model import (
    Client,
    ClientRole,
    EspTransform,
    Flavour,
    Gateway,
    GatewayMode,
    KeyMode,
    PskEncoding,
    QosClass,
    Service,
    Session,
    User,
    ValidationError,
    VpnRecord,
    parse_ipv4,
    parse_network,
)
from aaa_vpn.secret import Secret
from aaa_vpn.store.base import NotFound, Store
from aaa_vpn.wire.coa import IDENTIFICATION_NAMES

FORMAT_NAME = "aaa-vpn"
FORMAT_VERSION = 1

# Document keys in dependency order: a record only names records listed before it.
KINDS = ("qos_classes", "services", "gateways", "clients", "users", "vpn_records")

JsonObject = dict[str, Any]


class TransactionalStore(Store, Protocol):
    """A store that can group calls into one all-or-nothing transaction."""

    def transaction(self) -> AbstractContextManager[None]: ...


# -- records -> JSON ------------------------------------------------------------------

_PRINTABLE = frozenset(string.printable.encode()) - frozenset(b"\t\n\r\x0b\x0c")


def secret_to_json(secret: Secret) -> JsonObject:
    """``{"hex": ...}``, plus ``"text"`` when the secret is printable ASCII
    (RADIUS shared secrets are typed into equipment as text)."""
    value = secret.value
    out: JsonObject = {"hex": value.hex()}
    if value and all(byte in _PRINTABLE for byte in value):
        out["text"] = value.decode("ascii")
    return out


def user_to_json(user: User, *, with_secrets: bool = False) -> JsonObject:
    out: JsonObject = {
        "nai": user.nai,
        "home_agent": str(user.home_agent),
        "home_address": None if user.home_address is None else str(user.home_address),
        "mn_aaa_spi": user.mn_aaa_spi,
        "mn_ha_spi": user.mn_ha_spi,
        "enabled": user.enabled,
    }
    if with_secrets:
        out["mn_aaa_secret"] = secret_to_json(user.mn_aaa_secret)
        out["mn_ha_key"] = secret_to_json(user.mn_ha_key)
    return out


def client_to_json(client: Client, *, with_secrets: bool = False) -> JsonObject:
    out: JsonObject = {
        "name": client.name,
        "network": str(client.network),
        "role": client.role.value,
        "domain": client.domain,
        "coa_port": client.coa_port,
        "flavour": client.flavour.value,
        "require_message_authenticator": client.require_message_authenticator,
        "psk_encoding": client.psk_encoding.value,
        "require_coa_message_authenticator": client.require_coa_message_authenticator,
    }
    if with_secrets:
        out["secret"] = secret_to_json(client.secret)
    return out


def gateway_to_json(gateway: Gateway, *, with_secrets: bool = False) -> JsonObject:
    out: JsonObject = {
        "name": gateway.name,
        "address": str(gateway.address),
        "mode": gateway.mode.value,
        "protected_prefixes": [str(prefix) for prefix in gateway.protected_prefixes],
    }
    if with_secrets:
        out["gateway_key"] = secret_to_json(gateway.gateway_key)
    return out


def service_to_json(service: Service) -> JsonObject:
    return {
        "name": service.name,
        "key_mode": service.key_mode.value,
        "esp_transform": service.esp_transform.value,
        "ike_proposal": service.ike_proposal,
        "sa_lifetime": service.sa_lifetime,
        "ike_lifetime": service.ike_lifetime,
    }


def qos_to_json(qos: QosClass) -> JsonObject:
    return {"name": qos.name, "dscp": qos.dscp, "rate_kbps": qos.rate_kbps}


def vpn_record_to_json(record: VpnRecord, *, with_id: bool = True) -> JsonObject:
    out: JsonObject = {"id": record.id} if with_id else {}
    out.update(
        {
            "nai": record.nai,
            "correspondent": str(record.correspondent),
            "gateway": record.gateway,
            "service": record.service,
            "qos": record.qos,
        }
    )
    return out


def identification_to_json(raw: bytes) -> list[JsonObject]:
    """A session's stored identification attributes (RFC 5176 section 3,
    raw Type-Length-Value) as ``{"type", "name", "hex"}`` objects, in order."""
    out: list[JsonObject] = []
    position = 0
    while position + 2 <= len(raw):
        code, length = raw[position], raw[position + 1]
        value = raw[position + 2 : position + max(2, length)]
        name = IDENTIFICATION_NAMES.get(code, f"Attr-{code}")
        out.append({"type": code, "name": name, "hex": value.hex()})
        position += max(2, length)
    return out


def session_to_json(session: Session, *, with_secrets: bool = False) -> JsonObject:
    out: JsonObject = {
        "session_id": session.session_id,
        "nai": session.nai,
        "epoch": session.epoch,
        "home_address": str(session.home_address),
        "home_agent": str(session.home_agent),
        "care_of_address": str(session.care_of_address),
        "created": session.created,
        "expires": session.expires,
        "foreign_domain": session.foreign_domain,
        "spis": [{"node": str(a.node), "spi": a.spi, "path": a.path} for a in session.spis],
        "epoch_started": session.epoch_started,
        "fa_identification": identification_to_json(session.fa_identification),
        "ha_identification": identification_to_json(session.ha_identification),
    }
    if with_secrets:
        out["session_root_key"] = secret_to_json(session.session_root_key)
    return out


def export_document(store: Store, *, with_secrets: bool = False) -> JsonObject:
    """All provisioning data as a document :func:`import_document` reads back."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "secrets_included": with_secrets,
        "qos_classes": [qos_to_json(q) for q in store.list_qos()],
        "services": [service_to_json(s) for s in store.list_services()],
        "gateways": [gateway_to_json(g, with_secrets=with_secrets) for g in store.list_gateways()],
        "clients": [client_to_json(c, with_secrets=with_secrets) for c in store.list_clients()],
        "users": [user_to_json(u, with_secrets=with_secrets) for u in store.list_users()],
        "vpn_records": [
            vpn_record_to_json(r, with_id=False)
            for r in sorted(store.list_vpn_records(), key=lambda r: (r.nai, r.correspondent))
        ],
    }


# -- JSON -> records ---------------------------------------------------------------------

T = TypeVar("T")
_MISSING: Any = object()


class _Fields:
    """Typed access to one JSON record; every error names the record and field."""

    def __init__(self, obj: object, where: str, known: frozenset[str]) -> None:
        if not isinstance(obj, dict):
            raise ValidationError(f"{where}: expected an object")
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValidationError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        self.obj: Mapping[str, Any] = obj
        self.where = where

    def error(self, key: str, message: str) -> ValidationError:
        return ValidationError(f"{self.where}: field {key!r} {message}")

    def _get(self, key: str, default: Any) -> Any:
        value = self.obj.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        return value

    def text(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def integer(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.error(key, "must be an integer")
        return value

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def enum(self, key: str, cls: Callable[[Any], T], default: Any = _MISSING) -> T:
        value = self.text(key, default)
        if value is default:
            return value  # type: ignore[no-any-return]
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in cls)  # type: ignore[attr-defined]
            raise self.error(key, f"must be one of {choices}") from None

    def secret(self, key: str, fallback: Secret | None) -> Secret:
        value = self.obj.get(key)
        if value is None:
            if fallback is None:
                raise self.error(
                    key, "is required (the record does not exist yet, so there is no stored secret to keep)"
                )
            return fallback
        return secret_from_json(value, lambda message: self.error(key, message))


def secret_from_json(value: object, error: Callable[[str], ValidationError]) -> Secret:
    """Read ``{"hex": ...}`` or ``{"text": ...}`` (both: they must agree)."""
    if not isinstance(value, dict) or not value or set(value) - {"hex", "text"}:
        raise error('must be {"hex": "..."} or {"text": "..."}')
    raw: bytes | None = None
    if "hex" in value:
        if not isinstance(value["hex"], str):
            raise error("hex must be a string")
        try:
            raw = bytes.fromhex(value["hex"])
        except ValueError:
            raise error("hex is not hexadecimal") from None
    if "text" in value:
        if not isinstance(value["text"], str):
            raise error("text must be a string")
        text = value["text"].encode("utf-8")
        if raw is not None and raw != text:
            raise error("hex and text disagree")
        raw = text
    assert raw is not None
    return Secret(raw)


def user_from_json(obj: object, where: str, existing: User | None = None) -> User:
    f = _Fields(obj, where, _USER_FIELDS)
    home_address = f.text("home_address", None)
    return User(
        nai=f.text("nai"),
        home_agent=parse_ipv4("home agent", f.text("home_agent")),
        home_address=None if home_address is None else parse_ipv4("home address", home_address),
        mn_aaa_spi=f.integer("mn_aaa_spi", 2),
        mn_aaa_secret=f.secret("mn_aaa_secret", existing.mn_aaa_secret if existing else None),
        mn_ha_spi=f.integer("mn_ha_spi"),
        mn_ha_key=f.secret("mn_ha_key", existing.mn_ha_key if existing else None),
        enabled=f.flag("enabled", True),
    )


def client_from_json(obj: object, where: str, existing: Client | None = None) -> Client:
    f = _Fields(obj, where, _CLIENT_FIELDS)
    return Client(
        name=f.text("name"),
        network=parse_client_network(f.text("network")),
        secret=f.secret("secret", existing.secret if existing else None),
        role=f.enum("role", ClientRole),
        domain=f.text("domain", ""),
        coa_port=f.integer("coa_port", 3799),
        flavour=f.enum("flavour", Flavour, Flavour.AAA_VPN),
        require_message_authenticator=f.flag("require_message_authenticator", True),
        psk_encoding=f.enum("psk_encoding", PskEncoding, PskEncoding.SALT),
        require_coa_message_authenticator=f.flag("require_coa_message_authenticator", False),
    )


def gateway_from_json(obj: object, where: str, existing: Gateway | None = None) -> Gateway:
    f = _Fields(obj, where, _GATEWAY_FIELDS)
    prefixes = f._get("protected_prefixes", _MISSING)
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise f.error("protected_prefixes", "must be a list of CIDR strings")
    return Gateway(
        name=f.text("name"),
        address=parse_ipv4("gateway address", f.text("address")),
        mode=f.enum("mode", GatewayMode),
        protected_prefixes=tuple(parse_network("protected prefix", p) for p in prefixes),
        gateway_key=f.secret("gateway_key", existing.gateway_key if existing else None),
    )


def service_from_json(obj: object, where: str, existing: Service | None = None) -> Service:
    f = _Fields(obj, where, _SERVICE_FIELDS)
    defaults = Service(name="defaults")
    return Service(
        name=f.text("name"),
        key_mode=f.enum("key_mode", KeyMode, defaults.key_mode),
        esp_transform=f.enum("esp_transform", EspTransform, defaults.esp_transform),
        ike_proposal=f.text("ike_proposal", defaults.ike_proposal),
        sa_lifetime=f.integer("sa_lifetime", defaults.sa_lifetime),
        ike_lifetime=f.integer("ike_lifetime", defaults.ike_lifetime),
    )


def qos_from_json(obj: object, where: str, existing: QosClass | None = None) -> QosClass:
    f = _Fields(obj, where, _QOS_FIELDS)
    return QosClass(name=f.text("name"), dscp=f.integer("dscp", 0), rate_kbps=f.integer("rate_kbps", 0))


def vpn_record_from_json(obj: object, where: str) -> VpnRecord:
    f = _Fields(obj, where, _VPN_FIELDS)
    return VpnRecord(
        nai=f.text("nai"),
        correspondent=parse_network("correspondent", f.text("correspondent")),
        gateway=f.text("gateway"),
        service=f.text("service"),
        qos=f.text("qos", None),
    )


def parse_client_network(value: str) -> IPv4Network:
    """A client is one address (``192.0.2.1``, meaning /32) or a CIDR block."""
    return parse_network("client address", value)


_USER_FIELDS = frozenset(
    {"nai", "home_agent", "home_address", "mn_aaa_spi", "mn_aaa_secret", "mn_ha_spi", "mn_ha_key", "enabled"}
)
_CLIENT_FIELDS = frozenset(
    {
        "name",
        "network",
        "secret",
        "role",
        "domain",
        "coa_port",
        "flavour",
        "require_message_authenticator",
        "psk_encoding",
        "require_coa_message_authenticator",
    }
)
_GATEWAY_FIELDS = frozenset({"name", "address", "mode", "protected_prefixes", "gateway_key"})
_SERVICE_FIELDS = frozenset({"name", "key_mode", "esp_transform", "ike_proposal", "sa_lifetime", "ike_lifetime"})
_QOS_FIELDS = frozenset({"name", "dscp", "rate_kbps"})
# "id" is accepted (and ignored) so that `vpn list --json` output can be imported.
_VPN_FIELDS = frozenset({"id", "nai", "correspondent", "gateway", "service", "qos"})


@dataclasses.dataclass
class ImportSummary:
    """What an import did, per record kind."""

    added: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    updated: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    unchanged: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    deleted: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def to_json(self) -> JsonObject:
        return {
            kind: {
                "added": self.added[kind],
                "updated": self.updated[kind],
                "unchanged": self.unchanged[kind],
                "deleted": self.deleted[kind],
            }
            for kind in KINDS
        }


def _check_header(doc: object) -> dict[str, list[Any]]:
    if not isinstance(doc, dict):
        raise ValidationError("the import document must be a JSON object")
    if doc.get("format") != FORMAT_NAME:
        raise ValidationError(f'the import document must have "format": "{FORMAT_NAME}"')
    version = doc.get("version")
    if version != FORMAT_VERSION:
        raise ValidationError(
            f"unsupported import format version {version!r}: this aaa_vpn reads version {FORMAT_VERSION}"
        )
    unknown = sorted(set(doc) - {"format", "version", "secrets_included", *KINDS})
    if unknown:
        raise ValidationError(f"unknown top-level field(s) {', '.join(map(repr, unknown))}")
    lists: dict[str, list[Any]] = {}
    for kind in KINDS:
        records = doc.get(kind, [])
        if not isinstance(records, list):
            raise ValidationError(f"{kind!r} must be a list")
        lists[kind] = records
    return lists


#: The deepest nesting an import document has: the document, a list of
#: records, a record, a record's list or secret object, a string.
DOCUMENT_DEPTH = 5


def parse_document(text: str | bytes, source: str) -> object:
    """The JSON text of an import document from ``source`` (a file name, for
    errors) as a value for :func:`import_document`. Raises ValidationError
    for text that is not JSON, and for JSON nested past the interpreter's
    recursion limit (an import document nests only :data:`DOCUMENT_DEPTH`
    levels)."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValidationError(
            f"{source} is not an import document: it nests deeper than the JSON reader follows"
            f" (an import document nests {DOCUMENT_DEPTH} levels: docs/import-format.md)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{source} is not valid JSON: {exc}") from None


def _record_key(obj: object, key: str) -> object:
    return obj.get(key) if isinstance(obj, dict) else None


@contextmanager
def _named(where: str) -> Iterator[None]:
    """Errors raised inside name the record ``where`` (the model's own do not)."""
    try:
        yield
    except ValidationError as exc:
        if str(exc).startswith(where):
            raise
        raise ValidationError(f"{where}: {exc}") from None


def import_document(store: TransactionalStore, doc: object, *, replace: bool = False) -> ImportSummary:
    """Apply ``doc`` to ``store`` in one transaction (see the module rules).

    Raises :class:`ValidationError` for a malformed document or record (naming
    it, e.g. ``users[2]``) and the store's errors for conflicts; either way
    nothing is written.
    """
    lists = _check_header(doc)
    summary = ImportSummary()

    def upsert(
        kind: str,
        key_field: str,
        getter: Callable[[str], T],
        parse: Callable[[object, str, T | None], T],
        add: Callable[[T], None],
        update: Callable[[T], None],
    ) -> set[str]:
        seen: dict[str, int] = {}
        for index, obj in enumerate(lists[kind]):
            where = f"{kind}[{index}]"
            key = _record_key(obj, key_field)
            if isinstance(key, str):
                where += f" ({key})"
                if key in seen:
                    raise ValidationError(f"{where}: duplicate {key_field} (also {kind}[{seen[key]}])")
                seen[key] = index
                try:
                    existing: T | None = getter(key)
                except NotFound:
                    existing = None
            else:
                existing = None
            with _named(where):
                record = parse(obj, where, existing)
            if existing is None:
                add(record)
                summary.added[kind] += 1
            elif existing != record:
                update(record)
                summary.updated[kind] += 1
            else:
                summary.unchanged[kind] += 1
        return set(seen)

    with store.transaction():
        qos = upsert("qos_classes", "name", store.get_qos, qos_from_json, store.add_qos, store.update_qos)
        services = upsert(
            "services", "name", store.get_service, service_from_json, store.add_service, store.update_service
        )
        gateways = upsert(
            "gateways", "name", store.get_gateway, gateway_from_json, store.add_gateway, store.update_gateway
        )
        clients = upsert("clients", "name", store.get_client, client_from_json, store.add_client, store.update_client)
        users = upsert("users", "nai", store.get_user, user_from_json, store.add_user, store.update_user)

        existing_vpn = {(r.nai, r.correspondent): r for r in store.list_vpn_records()}
        seen_vpn: dict[tuple[str, IPv4Network], int] = {}
        for index, obj in enumerate(lists["vpn_records"]):
            where = f"vpn_records[{index}]"
            with _named(where):
                record = vpn_record_from_json(obj, where)
            identity = (record.nai, record.correspondent)
            if identity in seen_vpn:
                raise ValidationError(
                    f"{where}: duplicate record for {record.nai} {record.correspondent}"
                    f" (also vpn_records[{seen_vpn[identity]}])"
                )
            seen_vpn[identity] = index
            old = existing_vpn.get(identity)
            if old is None:
                store.add_vpn_record(record)
                summary.added["vpn_records"] += 1
            elif dataclasses.replace(record, id=old.id) != old:
                store.update_vpn_record(dataclasses.replace(record, id=old.id))
                summary.updated["vpn_records"] += 1
            else:
                summary.unchanged["vpn_records"] += 1

        if replace:
            # Dependents first, so RESTRICT only fires for records the document
            # itself still names (and then the whole import fails, as it should).
            for identity, old in existing_vpn.items():
                if identity not in seen_vpn and old.id is not None:
                    store.delete_vpn_record(old.id)
                    summary.deleted["vpn_records"] += 1
            for kind, keep, records, delete in (
                ("users", users, [u.nai for u in store.list_users()], store.delete_user),
                ("clients", clients, [c.name for c in store.list_clients()], store.delete_client),
                ("gateways", gateways, [g.name for g in store.list_gateways()], store.delete_gateway),
                ("services", services, [s.name for s in store.list_services()], store.delete_service),
                ("qos_classes", qos, [q.name for q in store.list_qos()], store.delete_qos),
            ):
                for key in records:
                    if key not in keep:
                        delete(key)
                        summary.deleted[kind] += 1
    return summary


__all__ = [
    "DOCUMENT_DEPTH",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KINDS",
    "ImportSummary",
    "TransactionalStore",
    "client_from_json",
    "client_to_json",
    "export_document",
    "gateway_from_json",
    "gateway_to_json",
    "identification_to_json",
    "import_document",
    "parse_client_network",
    "parse_document",
    "qos_from_json",
    "qos_to_json",
    "secret_from_json",
    "secret_to_json",
    "service_from_json",
    "service_to_json",
    "session_to_json",
    "user_from_json",
    "user_to_json",
    "vpn_record_from_json",
    "vpn_record_to_json",
]
