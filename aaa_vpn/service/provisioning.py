"""The rules of provisioning input, declared once for every way records are
given: the command line (:mod:`aaa_vpn.cli.records`) and the HTTP API
(:mod:`aaa_vpn.net.api_server`, its OpenAPI document).

Rules:

1. Each kind of record (:class:`KindRules`) names its key, its fields
   (:class:`FieldRule`) and its secrets. A field's parser turns what an
   operator gave -- a command-line string or a JSON value -- into the
   record's value, and raises :class:`~aaa_vpn.model.ValidationError` with
   the message both interfaces show. The record then validates itself
   (:mod:`aaa_vpn.model`): ranges, names, addresses no node can have.
2. ``add`` needs the required fields and every secret; a field not given
   takes the record's default. ``change`` keeps what is not given; a field
   that may be emptied (``nullable``) is emptied by JSON ``null`` (the
   command line's ``--no-X``). Secrets are replaced only when given.
3. A JSON document naming a field the kind does not have is refused (a typo
   must not be silently ignored); so is a key in the body that differs from
   the key in the path.
4. Secrets in JSON are ``{"hex": "..."}`` or ``{"text": "..."}``, as in the
   import format (docs/import-format.md); they are never part of an answer.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from aaa_vpn.model import (
    Client,
    ClientRole,
    EspTransform,
    Flavour,
    Gateway,
    GatewayMode,
    KeyMode,
    QosClass,
    Service,
    User,
    ValidationError,
    VpnRecord,
    parse_ipv4,
    parse_network,
)
from aaa_vpn.secret import Secret
from aaa_vpn.store.transfer import secret_from_json
from aaa_vpn.wire.enums import PskEncoding

Parser = Callable[[Any], Any]


# -- parsers (rule 1) ---------------------------------------------------------------------------


def ipv4(what: str) -> Parser:
    """An IPv4 address, e.g. ``192.0.2.1``."""
    return lambda value: parse_ipv4(what, _text(what, value))


def network(what: str) -> Parser:
    """A network in CIDR form, host bits clear (``10.1.0.0/16``)."""
    return lambda value: parse_network(what, _text(what, value))


def client_network(value: Any) -> IPv4Network:
    """A RADIUS client: one address (``192.0.2.1``, meaning /32) or a CIDR block."""
    return parse_network("client address", _text("client address", value))


def choice(what: str, values: type[enum.Enum]) -> Parser:
    """One of an enumeration's values."""

    def parse(value: Any) -> enum.Enum:
        if isinstance(value, values):
            return value
        allowed = [member.value for member in values]
        if value not in allowed:
            raise ValidationError(f"invalid {what} {value!r}: one of {', '.join(allowed)}")
        return values(value)

    return parse


def integer(what: str) -> Parser:
    """An integer (a JSON number without fraction, or decimal digits)."""

    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValidationError(f"invalid {what} {value!r}: expected an integer")

    return parse


def boolean(what: str) -> Parser:
    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise ValidationError(f"invalid {what} {value!r}: expected true or false")

    return parse


def text(what: str) -> Parser:
    return lambda value: _text(what, value)


def name_of(what: str) -> Parser:
    """The name of another record (checked by the record and the store)."""
    return text(what)


def prefixes(what: str) -> Parser:
    """One or more networks (a list in JSON, a repeated option on the command line)."""

    def parse(value: Any) -> tuple[IPv4Network, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValidationError(f"invalid {what}s {value!r}: expected a list of networks")
        return tuple(network(what)(item) for item in value)

    return parse


def _text(what: str, value: Any) -> str:
    if isinstance(value, IPv4Address | IPv4Network):
        return str(value)
    if not isinstance(value, str):
        raise ValidationError(f"invalid {what} {value!r}: expected a string")
    return value


# -- declarations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRule:
    """One field of a record as an operator gives it (rule 1)."""

    name: str
    """The record's field (the JSON member, the CLI option's parameter)."""
    parse: Parser
    description: str
    json_type: str = "string"
    """For the OpenAPI document: string, integer, boolean or array."""
    required: bool = False
    nullable: bool = False
    choices: tuple[str, ...] = ()
    example: Any = None


@dataclass(frozen=True)
class SecretRule:
    name: str
    """The record's field."""
    label: str


@dataclass(frozen=True)
class KindRules:
    """A kind of record: its key, fields and secrets (rules 1-3)."""

    kind: str
    """Singular, as messages say it: ``user``, ``gateway``, ``VPN record``."""
    record: type[Any]
    key: str
    """The field that names one record."""
    key_parse: Parser
    fields: tuple[FieldRule, ...]
    secrets: tuple[SecretRule, ...] = ()
    key_assigned: bool = False
    """The store assigns the key (VPN records' ids)."""

    def field(self, name: str) -> FieldRule:
        for rule in self.fields:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def parser(self, name: str) -> Parser:
        return self.field(name).parse

    @property
    def members(self) -> frozenset[str]:
        return frozenset({self.key, *(f.name for f in self.fields), *(s.name for s in self.secrets)})

    def _checked(self, body: object, key: object | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValidationError(f"a {self.kind} is a JSON object")
        unknown = sorted(set(body) - self.members)
        if unknown:
            raise ValidationError(f"unknown {self.kind} field {unknown[0]!r}")
        if key is not None and self.key in body and self.key_parse(body[self.key]) != key:
            raise ValidationError(f"the {self.kind} in the body is not the one in the path")
        return body

    def _secret(self, rule: SecretRule, value: object) -> Secret:
        def error(message: str) -> ValidationError:
            return ValidationError(f"{rule.label}: {message}")

        return secret_from_json(value, error)

    def from_json(self, body: object) -> Any:
        """Rule 2 (``add``): the record a JSON object describes."""
        values = self._checked(body, None)
        out: dict[str, Any] = {}
        if not self.key_assigned:
            if self.key not in values:
                raise ValidationError(f"the {self.kind}'s {self.key} is required")
            out[self.key] = self.key_parse(values[self.key])
        for secret in self.secrets:
            if secret.name not in values:
                raise ValidationError(f"the {secret.label} is required")
            out[secret.name] = self._secret(secret, values[secret.name])
        for rule in self.fields:
            if rule.name in values and not (values[rule.name] is None and rule.nullable):
                out[rule.name] = rule.parse(values[rule.name])
            elif rule.required:
                raise ValidationError(f"the {self.kind}'s {rule.name} is required")
        return self.record(**out)

    def changed(self, old: Any, body: object, fixed: tuple[str, ...] = ()) -> Any:
        """Rule 2 (``change``): ``old`` with what the JSON object gives;
        ``fixed`` fields cannot change."""
        values = self._checked(body, getattr(old, self.key))
        changes: dict[str, Any] = {}
        for secret in self.secrets:
            if secret.name in values:
                changes[secret.name] = self._secret(secret, values[secret.name])
        for rule in self.fields:
            if rule.name not in values:
                continue
            if rule.name in fixed:
                if rule.parse(values[rule.name]) != getattr(old, rule.name):
                    raise ValidationError(f"a {self.kind}'s {rule.name} cannot change")
                continue
            if values[rule.name] is None:
                if not rule.nullable:
                    raise ValidationError(f"the {self.kind}'s {rule.name} cannot be empty")
                changes[rule.name] = None
            else:
                changes[rule.name] = rule.parse(values[rule.name])
        return dataclasses.replace(old, **changes)


def _choices(values: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in values)


def _choice_field(name: str, what: str, values: type[enum.Enum], description: str, **how: Any) -> FieldRule:
    return FieldRule(name, choice(what, values), description, choices=_choices(values), **how)


USER = KindRules(
    kind="user",
    record=User,
    key="nai",
    key_parse=text("NAI"),
    fields=(
        FieldRule("home_agent", ipv4("home agent"), "The user's home agent.", required=True, example="192.0.2.2"),
        FieldRule(
            "home_address",
            ipv4("home address"),
            "Fixed home address; null: the home agent assigns one.",
            nullable=True,
            example="198.51.100.10",
        ),
        FieldRule(
            "mn_ha_spi",
            integer("MN-HA SPI"),
            "SPI of the MN-HA security association (>= 256).",
            json_type="integer",
            required=True,
            example=256,
        ),
        FieldRule("mn_aaa_spi", integer("MN-AAA SPI"), "SPI of the MN-AAA authenticator.", json_type="integer"),
        FieldRule("enabled", boolean("enabled"), "Whether the user may register.", json_type="boolean"),
    ),
    secrets=(SecretRule("mn_aaa_secret", "MN-AAA secret"), SecretRule("mn_ha_key", "MN-HA key")),
)

CLIENT = KindRules(
    kind="client",
    record=Client,
    key="name",
    key_parse=text("client name"),
    fields=(
        FieldRule("network", client_network, "The client's address or network.", required=True, example="192.0.2.1/32"),
        _choice_field("role", "client role", ClientRole, "What the client is.", required=True),
        FieldRule("domain", text("domain"), "The client's administrative domain (realm)."),
        _choice_field("flavour", "profile flavour", Flavour, "Which attributes carry its VPN profile."),
        FieldRule("coa_port", integer("CoA port"), "Its CoA/Disconnect port (RFC 5176).", json_type="integer"),
        FieldRule(
            "require_message_authenticator",
            boolean("require_message_authenticator"),
            "Drop its requests without Message-Authenticator.",
            json_type="boolean",
        ),
        _choice_field(
            "psk_encoding",
            "pre-shared-secret encoding",
            PskEncoding,
            "3gpp2 flavour: 3GPP2-Pre-Shared-Secret salt-encrypted (StarOS) or plain (the public dictionaries).",
        ),
        FieldRule(
            "require_coa_message_authenticator",
            boolean("require_coa_message_authenticator"),
            "Believe its CoA/Disconnect ACKs and NAKs only with a Message-Authenticator.",
            json_type="boolean",
        ),
    ),
    secrets=(SecretRule("secret", "RADIUS shared secret"),),
)

GATEWAY = KindRules(
    kind="gateway",
    record=Gateway,
    key="name",
    key_parse=text("gateway name"),
    fields=(
        FieldRule("address", ipv4("gateway address"), "The gateway's address.", required=True, example="203.0.113.1"),
        _choice_field(
            "mode",
            "gateway mode",
            GatewayMode,
            "static: tunnel to the HA; dynamic: route optimisation to the FA.",
            required=True,
        ),
        FieldRule(
            "protected_prefixes",
            prefixes("protected prefix"),
            "The prefixes behind the gateway.",
            json_type="array",
            required=True,
            example=["10.1.0.0/16"],
        ),
    ),
    secrets=(SecretRule("gateway_key", "gateway key"),),
)

SERVICE = KindRules(
    kind="service",
    record=Service,
    key="name",
    key_parse=text("service name"),
    fields=(
        _choice_field(
            "key_mode", "key mode", KeyMode, "manual: AAA-issued ESP keys; ikev2: IKEv2 with an AAA-issued PSK."
        ),
        _choice_field("esp_transform", "ESP transform", EspTransform, "The ESP transform of the service's paths."),
        FieldRule("ike_proposal", text("IKE proposal"), "IKEv2 proposal in strongSwan syntax."),
        FieldRule("sa_lifetime", integer("SA lifetime"), "Seconds.", json_type="integer"),
        FieldRule("ike_lifetime", integer("IKE lifetime"), "Seconds.", json_type="integer"),
    ),
)

QOS = KindRules(
    kind="QoS class",
    record=QosClass,
    key="name",
    key_parse=text("QoS class name"),
    fields=(
        FieldRule("dscp", integer("DSCP"), "DSCP to mark with (0..63).", json_type="integer"),
        FieldRule("rate_kbps", integer("rate"), "Rate limit, kbit/s (0: unlimited).", json_type="integer"),
    ),
)

VPN = KindRules(
    kind="VPN record",
    record=VpnRecord,
    key="id",
    key_parse=integer("VPN record id"),
    key_assigned=True,
    fields=(
        FieldRule("nai", text("NAI"), "The user.", required=True, example="mn1@home.example"),
        FieldRule(
            "correspondent",
            network("correspondent"),
            "The correspondent network.",
            required=True,
            example="10.1.0.0/16",
        ),
        FieldRule("gateway", name_of("gateway"), "The gateway in front of it.", required=True, example="gw1"),
        FieldRule("service", name_of("service"), "The security service.", required=True, example="gold"),
        FieldRule("qos", name_of("QoS class"), "The QoS class; null: none.", nullable=True, example="voice"),
    ),
)

#: Every kind, by the name of its collection in the API and the store's method stem.
KINDS: Mapping[str, tuple[KindRules, str]] = {
    "users": (USER, "user"),
    "clients": (CLIENT, "client"),
    "gateways": (GATEWAY, "gateway"),
    "services": (SERVICE, "service"),
    "qos": (QOS, "qos"),
    "vpn": (VPN, "vpn_record"),
}

#: What the audit log calls a kind's changes (``<name>.add``), by the store's method stem.
AUDIT_NAMES: Mapping[str, str] = {stem: collection for collection, (_rules, stem) in KINDS.items()} | {
    "session": "sessions"
}


__all__ = [
    "AUDIT_NAMES",
    "CLIENT",
    "GATEWAY",
    "KINDS",
    "QOS",
    "SERVICE",
    "USER",
    "VPN",
    "FieldRule",
    "KindRules",
    "SecretRule",
    "boolean",
    "choice",
    "client_network",
    "integer",
    "ipv4",
    "network",
    "prefixes",
    "text",
]
