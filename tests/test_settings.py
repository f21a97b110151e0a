"""Settings declared once (aaa_vpn/service/settings.py): the command-line
options, the TOML keys, the checks and the roles' configurations all come from
the settings dataclasses' declarations."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from aaa_vpn.cli import cli
from aaa_vpn.cli.records import KINDS
from aaa_vpn.model import ValidationError
from aaa_vpn.roles.fa import FaConfig
from aaa_vpn.roles.gw import GwConfig
from aaa_vpn.roles.ha import HaConfig
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.service.agent_config import ROLES, AgentSettings, agent_options, load_agent_settings, role_config
from aaa_vpn.service.config import ConfigFile, HomeServerSettings
from aaa_vpn.service.settings import declared


def _command(*path: str) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name is not None}


@pytest.mark.parametrize("role", ROLES)
def test_agent_options_are_the_declared_settings_of_the_role(role: str) -> None:
    options = _options(_command("agent", role))
    assert set(options) - {"config_path", "check", "help"} == {item.name for item in agent_options(role)}
    for item in agent_options(role):
        option = options[item.name]
        assert option.opts[0] == item.setting.flag
        assert (option.help or "") == item.setting.help  # the default is never in the help text
        if item.name == "name":
            assert option.default == role
        elif not item.setting.multiple and item.name != "secret_file":
            assert option.default == item.default, item.name
    text = CliRunner().invoke(cli, ["agent", role, "--help"], terminal_width=200).output
    assert "[default: 434; 1<=x<=65535]" in text and "[default: 1800; 1<=x<=65534]" in text


def test_toml_keys_of_each_role_are_its_declared_settings(tmp_path: Path) -> None:
    config = tmp_path / "ha.toml"
    config.write_text('address = "192.0.2.2"\nha_timeout = 3\n')
    with pytest.raises(ValidationError, match="ha_timeout is not a known setting") as error:
        load_agent_settings("ha", config, {})
    known = str(error.value).split("(known: ")[1].rstrip(")").split(", ")
    assert known == sorted(
        item.toml_key for item in declared(AgentSettings) if item.for_role("ha") and item.toml_key is not None
    )


def test_an_option_and_its_toml_key_meet_the_same_rule(tmp_path: Path) -> None:
    key = tmp_path / "gw.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    config = tmp_path / "gw.toml"
    config.write_text(f'address = "192.0.2.10"\ngateway_key_file = "{key}"\nrefresh_threshold = 1\n')
    with pytest.raises(ValidationError, match=r"invalid refresh threshold 1.0: a fraction of the lifetime, 0 < x < 1"):
        load_agent_settings("gw", config, {})
    result = CliRunner().invoke(cli, ["agent", "gw", "--config", str(config), "--refresh-threshold", "0.25", "--check"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["agent", "gw", "--config", str(config), "--refresh-threshold", "1", "--check"])
    assert result.exit_code == 2 and "0<x<1" in result.output


def test_role_configs_take_the_settings_of_their_role_by_name() -> None:
    server = ServerConfig("192.0.2.5", 1812, Secret(b"s" * 16))
    for role, config_type in (("fa", FaConfig), ("ha", HaConfig), ("gw", GwConfig)):
        settings = AgentSettings(
            role,
            IPv4Address("192.0.2.1"),
            aaa_servers=(server,) if role != "gw" else (),
            gateway_key=Secret(b"k" * 16) if role == "gw" else None,
            max_lifetime=77,
        )
        config = role_config(settings)
        assert isinstance(config, config_type) and config.max_lifetime == 77
        fields = {f.name for f in dataclasses.fields(config_type)}
        for item in declared(AgentSettings):
            if item.name in fields and item.for_role(role):
                assert getattr(config, item.name) == getattr(settings, item.name), (role, item.name)


def test_serve_home_options_and_toml_keys_are_the_declared_settings(tmp_path: Path) -> None:
    options = _options(_command("serve", "home"))
    flagged = [item for item in declared(HomeServerSettings) if item.setting.flag]
    assert set(options) - {"help", "check"} == {item.name for item in flagged}
    assert options["port"].default == 1812 and options["session_lifetime"].default == 3600
    config = tmp_path / "aaa-vpn.toml"

    def toml(value: object) -> str:
        return str(value).lower() if isinstance(value, bool) else repr(value)

    # TOML has no null (an unset key) and no empty tuple literal here (a repeatable option's default)
    given = [item for item in flagged if item.default is not None and not item.setting.multiple]
    config.write_text("[serve.home]\n" + "".join(f"{item.name} = {toml(item.default)}\n" for item in given))
    assert ConfigFile.load(config).serve_home == {item.name: item.default for item in given}


def test_every_record_kind_has_its_commands_and_options() -> None:
    for kind in KINDS:
        group = _command(kind.group)
        assert isinstance(group, click.Group)
        assert set(group.commands) == {"add", "list", "show", "change", "delete"}
        add, change = _options(group.commands["add"]), _options(group.commands["change"])
        for field in kind.fields:
            assert field.name in add
            assert (field.name in change) == field.on_change
        for spec in kind.secrets:
            assert {spec.param, f"{spec.param}_hex", f"{spec.param}_file", f"generate_{spec.param}"} <= set(add)


def test_the_aaa_pool_of_an_fa_is_configured_by_option_or_file_and_checked(tmp_path: Path) -> None:
    secret = Secret(b"s" * 16)
    aaa = [(IPv4Address("192.0.2.3"), 1812), (IPv4Address("192.0.2.4"), 1812)]
    settings = load_agent_settings(
        "fa", None, {"address": IPv4Address("192.0.2.1"), "radius_pool": "keyed-balance"}, aaa=aaa, secret=secret
    )
    config = role_config(settings)
    assert isinstance(config, FaConfig)
    assert config.radius_pool == "keyed-balance" and config.radius_zombie_period == 40.0
    assert [s.address for s in config.aaa_servers] == ["192.0.2.3", "192.0.2.4"]
    toml = tmp_path / "fa.toml"
    toml.write_text('address = "192.0.2.1"\naaa_pool = "load-balance"\naaa_zombie_period = 0\n')
    from_file = role_config(load_agent_settings("fa", toml, {}, aaa=aaa, secret=secret))
    assert isinstance(from_file, FaConfig)
    assert from_file.radius_pool == "load-balance" and from_file.radius_zombie_period == 0.0
    toml.write_text('address = "192.0.2.1"\naaa_pool = "round-robin"\n')
    with pytest.raises(ValidationError, match="invalid AAA pool type 'round-robin': one of fail-over, load-balance"):
        load_agent_settings("fa", toml, {}, aaa=aaa, secret=secret)
