"""The provisioning groups ``user``, ``client``, ``gateway``, ``service``,
``qos`` and ``vpn``: one declaration per kind of record, from which
:mod:`aaa_vpn.cli.crud` makes the add/list/show/change/delete commands.

The defaults of ``add`` are the model's (:mod:`aaa_vpn.model`); the records
validate themselves, and the store checks names and references. How each
option's value is read (and the error when it cannot be) is the shared rule of
:mod:`aaa_vpn.service.provisioning`, which the HTTP API applies too.
"""

from __future__ import annotations

import enum
from typing import Any

import click

from aaa_vpn.cli.common import CLIENT_SECRET, GATEWAY_KEY, MN_AAA_SECRET, MN_HA_KEY
from aaa_vpn.cli.crud import Field, Key, Kind, kind_group
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
    User,
    ValidationError,
    VpnRecord,
)
from aaa_vpn.service import provisioning as rules
from aaa_vpn.store import SqlStore
from aaa_vpn.store.transfer import (
    JsonObject,
    client_to_json,
    gateway_to_json,
    qos_to_json,
    service_to_json,
    session_to_json,
    user_to_json,
    vpn_record_to_json,
)

NAME = Key("name", "NAME")


def _ipv4(name: str, flag: str, kind: rules.KindRules, **how: Any) -> Field:
    return Field(name, flag, metavar="IPV4", parse=kind.parser(name), **how)


class _RuleChoice(click.Choice):  # type: ignore[type-arg]
    """click's choice (its metavar and help), read by the shared rule (its message)."""

    def __init__(self, values: type[enum.Enum], parse: rules.Parser) -> None:
        super().__init__([member.value for member in values])
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self._parse(value).value
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)


def _choice(name: str, flag: str, values: type[enum.Enum], kind: rules.KindRules, **how: Any) -> Field:
    parse = kind.parser(name)
    return Field(name, flag, type=_RuleChoice(values, parse), parse=parse, **how)


def _user_extra(store: SqlStore, user: User, with_secrets: bool) -> JsonObject:
    return {
        "vpn_records": [vpn_record_to_json(r) for r in store.list_vpn_records(user.nai)],
        "sessions": [session_to_json(s, with_secrets=with_secrets) for s in store.find_sessions(user.nai)],
    }


USER = Kind(
    group="user",
    help="Mobile users (by NAI) and the keys their mobile nodes share.",
    label="user",
    titles=("mobile user", "users"),
    record=User,
    key=Key("nai", "NAI"),
    store="user",
    table="users",
    list_records=lambda store, _: store.list_users(),
    to_json=user_to_json,
    fields=(
        _ipv4("home_agent", "--home-agent", rules.USER, required=True, help="The user's home agent."),
        _ipv4(
            "home_address",
            "--home-address",
            rules.USER,
            help="Fixed home address.",
            shown_default="the HA assigns one",
            clear=("--no-home-address", "Let the home agent assign the home address."),
        ),
        Field(
            "mn_ha_spi", "--mn-ha-spi", type=int, required=True, help="SPI of the MN-HA security association (>= 256)."
        ),
        Field("mn_aaa_spi", "--mn-aaa-spi", type=int, help="SPI of the MN-AAA authenticator."),
        Field(
            "enabled",
            "--enable/--disable",
            help="Enable or disable the user.",
            add_flag=("--disabled", "Create the user disabled."),
        ),
    ),
    secrets=(MN_AAA_SECRET, MN_HA_KEY),
    show_extra=_user_extra,
    sample="mn1@home.example",
    examples={
        "add": (
            "aaa-vpn user add mn1@home.example --home-agent 192.0.2.2 --home-address 198.51.100.10"
            " --mn-aaa-secret-file mn1.secret --mn-ha-spi 256 --generate-mn-ha-key --show-secret",
        ),
        "list": ("aaa-vpn --json user list",),
        "change": ("aaa-vpn user change mn1@home.example --home-agent 192.0.2.3",),
    },
    docs={
        "show": "Show one user, with its VPN records and sessions.",
        "delete": "Delete a user with its VPN records and sessions.",
    },
)

CLIENT = Kind(
    group="client",
    help="RADIUS clients: FAs, HAs, gateways and proxies.",
    label="client",
    titles=("RADIUS client", "RADIUS clients"),
    record=Client,
    key=NAME,
    store="client",
    table="clients",
    list_records=lambda store, _: store.list_clients(),
    to_json=client_to_json,
    fields=(
        Field(
            "network",
            "--address",
            metavar="IPV4|CIDR",
            parse=rules.CLIENT.parser("network"),
            required=True,
            help="The client's address or network.",
        ),
        _choice("role", "--role", ClientRole, rules.CLIENT, required=True, help="What the client is."),
        Field("domain", "--domain", help="The client's administrative domain (realm)."),
        _choice("flavour", "--flavour", Flavour, rules.CLIENT, help="Which attributes carry its VPN profile."),
        Field("coa_port", "--coa-port", type=click.IntRange(1, 65535), help="Its CoA/Disconnect port (RFC 5176)."),
        Field(
            "require_message_authenticator",
            "--require-message-authenticator/--no-require-message-authenticator",
            help="Drop its requests without Message-Authenticator.",
        ),
        _choice(
            "psk_encoding",
            "--psk-encoding",
            PskEncoding,
            rules.CLIENT,
            help="3gpp2 flavour: send 3GPP2-Pre-Shared-Secret salt-encrypted (StarOS) or plain (in clear, as the"
            " public dictionaries define it).",
        ),
        Field(
            "require_coa_message_authenticator",
            "--require-coa-message-authenticator/--no-require-coa-message-authenticator",
            help="Believe its CoA/Disconnect ACKs and NAKs only with a Message-Authenticator.",
        ),
    ),
    secrets=(CLIENT_SECRET,),
    sample="fa1",
    examples={
        "add": (
            "aaa-vpn client add fa1 --address 192.0.2.1 --role fa --domain visited.example"
            " --flavour aaa-vpn --secret-file fa1.secret",
        ),
        "show": ("aaa-vpn client show fa1 --show-secrets",),
        "change": ("aaa-vpn client change fa1 --generate-secret --show-secret",),
    },
)

GATEWAY = Kind(
    group="gateway",
    help="Gateways in front of correspondent hosts.",
    label="gateway",
    titles=("gateway", "gateways"),
    record=Gateway,
    key=NAME,
    store="gateway",
    table="gateways",
    list_records=lambda store, _: store.list_gateways(),
    to_json=gateway_to_json,
    fields=(
        _ipv4("address", "--address", rules.GATEWAY, required=True, help="The gateway's address."),
        _choice(
            "mode",
            "--mode",
            GatewayMode,
            rules.GATEWAY,
            required=True,
            help="static: tunnel to the HA; dynamic: route optimisation to the FA.",
        ),
        Field(
            "protected_prefixes",
            "--protects",
            metavar="CIDR",
            multiple=True,
            required=True,
            parse=rules.GATEWAY.parser("protected_prefixes"),
            help="A prefix behind the gateway (repeat for more).",
            change_help="Replace the protected prefixes (repeat for more).",
        ),
    ),
    secrets=(GATEWAY_KEY,),
    sample="gw1",
    examples={
        "add": ("aaa-vpn gateway add gw1 --address 203.0.113.1 --mode dynamic --protects 10.1.0.0/16 --generate",),
        "change": ("aaa-vpn gateway change gw1 --mode static",),
    },
    docs={"delete": "Delete a gateway no VPN record uses."},
)

SERVICE = Kind(
    group="service",
    help="Security services: IPsec transforms and lifetimes.",
    label="service",
    titles=("security service", "security services"),
    record=Service,
    key=NAME,
    store="service",
    table="services",
    list_records=lambda store, _: store.list_services(),
    to_json=service_to_json,
    fields=(
        _choice(
            "key_mode",
            "--key-mode",
            KeyMode,
            rules.SERVICE,
            help="manual: AAA-issued ESP keys; ikev2: IKEv2 with an AAA-issued PSK.",
        ),
        _choice(
            "esp_transform",
            "--esp-transform",
            EspTransform,
            rules.SERVICE,
            help="The ESP transform of the service's paths.",
        ),
        Field("ike_proposal", "--ike-proposal", help="IKEv2 proposal in strongSwan syntax."),
        Field("sa_lifetime", "--sa-lifetime", type=int, help="Seconds."),
        Field("ike_lifetime", "--ike-lifetime", type=int, help="Seconds."),
    ),
    sample="gold",
    examples={
        "add": ("aaa-vpn service add gold --key-mode ikev2 --esp-transform aes256gcm16",),
        "change": ("aaa-vpn service change gold --sa-lifetime 1800",),
    },
    docs={"delete": "Delete a security service no VPN record uses."},
)

QOS = Kind(
    group="qos",
    help="QoS classes: DSCP marking and rate limit.",
    label="QoS class",
    titles=("QoS class", "QoS classes"),
    record=QosClass,
    key=NAME,
    store="qos",
    table="qos_classes",
    list_records=lambda store, _: store.list_qos(),
    to_json=qos_to_json,
    fields=(
        Field("dscp", "--dscp", type=int, help="DSCP to mark with (0..63)."),
        Field("rate_kbps", "--rate-kbps", type=int, help="Rate limit, kbit/s (0: unlimited)."),
    ),
    sample="voice",
    examples={
        "add": ("aaa-vpn qos add voice --dscp 46 --rate-kbps 512",),
        "change": ("aaa-vpn qos change voice --rate-kbps 1024",),
    },
    docs={"delete": "Delete a QoS class no VPN record uses."},
)

_BY_USER = Field("nai", "--user", metavar="NAI", required=True, on_change=False, help="The user.")

VPN = Kind(
    group="vpn",
    help="Users' VPN records: correspondent network, gateway, service, QoS.",
    label="VPN record",
    titles=("VPN record", "VPN records"),
    record=VpnRecord,
    key=Key("id", "ID", type=int, on_add=False),
    store="vpn_record",
    table="vpn_records",
    list_records=lambda store, nai: store.list_vpn_records(nai),
    to_json=vpn_record_to_json,
    fields=(
        _BY_USER,
        Field(
            "correspondent",
            "--correspondent",
            metavar="CIDR",
            required=True,
            parse=rules.VPN.parser("correspondent"),
            help="The correspondent network.",
        ),
        Field("gateway", "--gateway", metavar="NAME", required=True, help="The gateway in front of it."),
        Field("service", "--service", metavar="NAME", required=True, help="The security service."),
        Field(
            "qos",
            "--qos",
            metavar="NAME",
            help="The QoS class.",
            shown_default="none",
            clear=("--no-qos", "Remove the QoS class."),
        ),
    ),
    list_filter=Field("nai", "--user", metavar="NAI", help="Only this user's records."),
    sample="3",
    examples={
        "group": ("aaa-vpn vpn list --user mn1@home.example",),
        "add": (
            "aaa-vpn vpn add --user mn1@home.example --correspondent 10.1.0.0/16 --gateway gw1 --service gold"
            " --qos voice",
        ),
        "list": ("aaa-vpn vpn list --user mn1@home.example",),
        "change": ("aaa-vpn vpn change 3 --gateway gw2",),
    },
    docs={"add": "Add a VPN record to a user."},
)

KINDS = (USER, CLIENT, GATEWAY, SERVICE, QOS, VPN)


def groups() -> list[click.Group]:
    """The provisioning groups."""
    return [kind_group(kind) for kind in KINDS]
