"""What an operator types, tried as a hostile tester would: documents nested
past Python's recursion limit, addresses no node can have, client networks
that would admit the whole Internet, and the edges of the SPI range. Each is
refused with one line that says what is wrong (exit status 2), or -- for SPI
2**32-1, which no RFC reserves -- accepted end to end."""

from __future__ import annotations

import dataclasses
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from aaa_vpn.cli import cli
from aaa_vpn.model import Client, ClientRole, Gateway, GatewayMode, User, ValidationError, VpnRecord
from aaa_vpn.roles.mn import MnConfig, MobileNode
from aaa_vpn.secret import Secret
from aaa_vpn.service.agent_config import load_agent_settings
from aaa_vpn.service.config import ConfigFile

from .mobility import FA1, GW_DYNAMIC, GW_STATIC, HA, HOME_ADDRESS, MN_AAA, MN_HA, MN_SOCKET, NAI, Network

DEEP = 100_000  # far past the interpreter's recursion limit


class Run:
    def __init__(self, tmp_path: Path) -> None:
        self.runner = CliRunner(env={"AAA_VPN_DB": str(tmp_path / "vpn.db"), "AAA_VPN_KEY_FILE": None})

    def __call__(self, *args: str, code: int = 0, input: str | None = None) -> Result:
        result = self.runner.invoke(cli, list(args), input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code == code, (args, result.output)
        assert "Traceback" not in result.output
        return result


@pytest.fixture
def run(tmp_path: Path) -> Run:
    runner = Run(tmp_path)
    runner("db", "init")
    return runner


# -- nesting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * DEEP + "]" * DEEP, '{"a": ' * DEEP + "1" + "}" * DEEP])
def test_an_import_nested_past_the_recursion_limit_is_one_clear_error(run: Run, tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    result = run("import", str(path), code=2)
    assert result.stderr.startswith(f"Error: {path} is not an import document: it nests deeper than")
    result = run("import", "-", code=2, input=text)
    assert "is not an import document: it nests deeper than" in result.stderr


def test_a_settings_file_nested_past_the_recursion_limit_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    with pytest.raises(ValidationError, match=f"config file {path} is not valid TOML: it nests arrays or tables"):
        ConfigFile.load(path)
    with pytest.raises(ValidationError, match="nests arrays or tables"):
        load_agent_settings("ha", path, {})


# -- addresses --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "why"),
    [
        ("0.0.0.0/0", "every IPv4 address"),
        ("0.0.0.0/1", "2147483648 addresses"),  # refused for its size before its content
        ("10.0.0.0/7", "at most a /8"),
        ("0.0.0.0", "this network"),
        ("0.1.2.3", "this network"),
        ("255.255.255.255", "limited broadcast"),
        ("240.0.0.0/8", "reserved"),
        ("224.0.0.5", "multicast"),
        ("224.0.0.0/8", "multicast"),
    ],
)
def test_client_networks_no_nas_can_send_from_are_refused(run: Run, network: str, why: str) -> None:
    result = run("client", "add", "c1", "--address", network, "--role", "fa", "--generate", code=2)
    assert result.stderr.startswith(f"Error: invalid client address {network}") and why in result.stderr
    with pytest.raises(ValidationError, match=why):
        Client("c1", IPv4Network(network), Secret(b"s" * 16), ClientRole.FA)


@pytest.mark.parametrize("network", ["127.0.0.1", "10.0.0.0/8", "192.0.2.0/24", "198.51.100.7"])
def test_ordinary_client_networks_are_accepted(run: Run, network: str) -> None:
    run("client", "add", "c1", "--address", network, "--role", "fa", "--generate")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("255.255.255.255", "limited broadcast"),
        ("0.0.0.0", "this network"),
        ("224.0.0.1", "multicast"),
        ("239.1.2.3", "multicast"),
        ("250.1.2.3", "reserved"),
    ],
)
def test_a_home_agent_no_node_can_be_is_refused(run: Run, tmp_path: Path, address: str, why: str) -> None:
    result = run("user", "add", NAI, "--home-agent", address, "--mn-ha-spi", "256", "--generate", code=2)
    assert result.stderr.startswith(f"Error: invalid home agent {address}") and why in result.stderr
    gateway = ("gateway", "add", "gw1", "--address", address, "--mode", "static", "--protects", "10.0.0.0/8")
    result = run(*gateway, "--generate", code=2)
    assert f"invalid gateway address {address}" in result.stderr
    secret = tmp_path / "fa.secret"
    secret.write_bytes(b"a-radius-shared-secret")
    secret.chmod(0o600)
    fa = ("agent", "fa", "--secret-file", str(secret), "--check")
    result = run(*fa, "--address", address, "--aaa", "192.0.2.5", code=2)
    assert f"Error: invalid agent address {address}: " in result.stderr and why in result.stderr
    result = run(*fa, "--address", "192.0.2.1", "--aaa", address, code=2)
    assert f"Error: invalid AAA server {address}: " in result.stderr and why in result.stderr
    result = run(
        "mn",
        "--nai",
        NAI,
        "--home-agent",
        address,
        "--home-address",
        HOME_ADDRESS,
        "--mn-ha-spi",
        "256",
        "--mn-ha-key-hex",
        "00" * 16,
        "--mn-aaa-secret",
        "s",
        "register",
        "--fa",
        "192.0.2.1",
        code=2,
    )
    assert f"Error: invalid --home-agent {address}: " in result.stderr and why in result.stderr


def test_loopback_where_it_cannot_be_meant(run: Run) -> None:
    """The whole topology may run on loopback (the demo does), but a home
    address or a correspondent network on 127/8 never leaves its host."""
    run("user", "add", NAI, "--home-agent", "127.0.0.2", "--mn-ha-spi", "256", "--generate")
    result = run("user", "change", NAI, "--home-address", "127.0.0.10", code=2)
    assert "Error: invalid home address 127.0.0.10: loopback" in result.stderr
    with pytest.raises(ValidationError, match=r"invalid correspondent 127\.0\.0\.0/8: loopback"):
        VpnRecord(NAI, IPv4Network("127.0.0.0/8"), "gw1", "gold")
    with pytest.raises(ValidationError, match=r"invalid protected prefix 224\.0\.0\.0/24: multicast"):
        Gateway("gw1", IPv4Address("192.0.2.10"), GatewayMode.STATIC, (IPv4Network("224.0.0.0/24"),), Secret(b"k" * 32))
    # a full tunnel (every destination through the gateway) is a network like any other
    VpnRecord(NAI, IPv4Network("0.0.0.0/0"), "gw1", "gold")


def test_an_import_meets_the_same_rules(run: Run, tmp_path: Path) -> None:
    document = {
        "format": "aaa-vpn",
        "version": 1,
        "clients": [{"name": "any", "network": "0.0.0.0/0", "role": "fa", "secret": {"text": "s" * 16}}],
    }
    path = tmp_path / "import.json"
    path.write_text(json.dumps(document))
    result = run("import", str(path), code=2)
    assert "clients[0] (any)" in result.stderr and "invalid client address 0.0.0.0/0" in result.stderr


# -- SPIs ---------------------------------------------------------------------------------------------


def _user(**changes: object) -> User:
    values: dict[str, object] = {
        "nai": NAI,
        "home_agent": IPv4Address(HA),
        "mn_aaa_secret": Secret(b"s"),
        "mn_ha_spi": 256,
        "mn_ha_key": Secret(bytes(16)),
    }
    values.update(changes)
    return User(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mn_ha_spi": 0x100000000}, "invalid MN-HA SPI 4294967296: an SPI is 256..4294967295"),
        ({"mn_ha_spi": -1}, "invalid MN-HA SPI -1"),
        ({"mn_ha_spi": 255}, "invalid MN-HA SPI 255"),  # RFC 5944 section 1.6 reserves 0-255
        ({"mn_aaa_spi": True}, "invalid MN-AAA SPI True"),
        ({"mn_ha_spi": 256.0}, "invalid MN-HA SPI 256.0"),
    ],
)
def test_spis_out_of_range_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _user(**changes)


def test_the_largest_spi_is_a_spi(run: Run, tmp_path: Path) -> None:
    """SPI 2**32-1 is accepted: RFC 4303 section 2.1 reserves only 0 (local
    use, never on the wire) and 1..255 (IANA), RFC 5944 section 1.6 only
    0..255; nothing reserves 0xFFFFFFFF. A registration with it succeeds."""
    run("user", "add", NAI, "--home-agent", HA, "--mn-ha-spi", str(0xFFFFFFFF), "--generate")
    result = run(
        "user",
        "add",
        "mn2@home.example",
        "--home-agent",
        HA,
        "--mn-ha-spi",
        str(1 << 32),
        "--generate",
        code=2,
    )
    assert "Error: invalid MN-HA SPI 4294967296: an SPI is 256..4294967295" in result.stderr
    net = Network(tmp_path / "net")
    try:
        net.store.update_user(dataclasses.replace(net.store.get_user(NAI), mn_ha_spi=0xFFFFFFFF))
        net.add_ha()
        net.add_fa("fa1", FA1)
        net.add_gw("gw-static", GW_STATIC)
        net.add_gw("gw-dynamic", GW_DYNAMIC)
        config = MnConfig(NAI, IPv4Address(HOME_ADDRESS), IPv4Address(HA), 0xFFFFFFFF, MN_HA, MN_AAA)
        node = MobileNode(config)
        net._add("mn", node, MN_SOCKET, 0, radius=False, backend=False)
        node.register(net.fa_address(FA1), net.clock)
        net.settle()
        assert net.nodes["mn"].done()[-1].code == 0
    finally:
        net.close()
