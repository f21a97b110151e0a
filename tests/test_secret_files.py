"""Secret and key files (aaa_vpn/secret_files.py): one reader for the agents,
the foreign AAA, the command line and the store's key file. Keys are read
exactly, a hex form is named by its option, text secrets lose one trailing
newline, and every reader refuses a file group or others can access."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from aaa_vpn.cli import cli
from aaa_vpn.model import ValidationError
from aaa_vpn.secret import Secret
from aaa_vpn.secret_files import SecretFileError, SecretForm, parse_hex, read_secret_file
from aaa_vpn.service.agent_config import load_agent_settings, settings_from_options
from aaa_vpn.service.foreign import load_foreign_settings

#: A key whose last octet is 0x0a, as one random key in 256 is (and 0x0d 0x0a before it).
KEY_ENDING_IN_NEWLINE = bytes(range(0x30, 0x30 + 29)) + b"\r\n\n"


def private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


# -- the reader ------------------------------------------------------------------------------------


def test_a_raw_key_is_read_exactly_and_a_text_secret_loses_one_newline(tmp_path: Path) -> None:
    path = private(tmp_path / "k", KEY_ENDING_IN_NEWLINE)
    assert read_secret_file(path, "key", SecretForm.RAW).value == KEY_ENDING_IN_NEWLINE
    assert read_secret_file(path, "secret", SecretForm.TEXT).value == KEY_ENDING_IN_NEWLINE[:-1]
    private(path, b"secret\r\n")
    assert read_secret_file(path, "secret", SecretForm.TEXT).value == b"secret"


def test_the_hex_form_ignores_layout_and_refuses_anything_else(tmp_path: Path) -> None:
    key = bytes(range(32))
    # `xxd -p` wraps at 30 octets: two lines for a 32-octet key
    path = private(tmp_path / "k.hex", key[:30].hex().encode() + b"\n" + key[30:].hex().encode() + b"\n")
    assert read_secret_file(path, "key", SecretForm.HEX).value == key
    assert parse_hex("0x00:11:22", "key") == b"\x00\x11\x22"
    private(path, b"hex:" + key.hex().encode())
    with pytest.raises(SecretFileError, match="is not hexadecimal") as error:
        read_secret_file(path, "--gateway-key-hex-file", SecretForm.HEX)
    assert key.hex() not in str(error.value)  # never the secret


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700 | 0o010])
def test_a_file_others_can_access_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = private(tmp_path / "k", b"k" * 32, mode)
    with pytest.raises(SecretFileError, match=rf"accessible by group or others \(mode {mode:04o}\); fix: chmod 600"):
        read_secret_file(path, "key", SecretForm.RAW)


def test_missing_and_odd_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="does not exist"):
        read_secret_file(tmp_path / "none", "--secret-file", SecretForm.TEXT)
    with pytest.raises(SecretFileError, match="is not a regular file"):
        read_secret_file(tmp_path, "--secret-file", SecretForm.TEXT)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match="is not a regular file"):  # refused, not waited on
        read_secret_file(fifo, "--secret-file", SecretForm.TEXT)
    short = private(tmp_path / "short", b"abc\n")
    with pytest.raises(SecretFileError, match="holds 3 octets; at least 8 are required"):
        read_secret_file(short, "--secret-file", SecretForm.TEXT, 8)


# -- the agents -------------------------------------------------------------------------------------


def test_the_gateway_key_file_is_read_exactly(tmp_path: Path) -> None:
    key = private(tmp_path / "gw.key", KEY_ENDING_IN_NEWLINE)
    settings = settings_from_options("gw", None, {"address": "192.0.2.10", "gateway_key": str(key)})
    assert settings.gateway_key == Secret(KEY_ENDING_IN_NEWLINE)
    config = tmp_path / "gw.toml"
    config.write_text(f'address = "192.0.2.10"\ngateway_key_file = "{key.name}"\n')
    assert load_agent_settings("gw", config, {}).gateway_key == Secret(KEY_ENDING_IN_NEWLINE)


def test_the_gateway_key_in_hex_from_the_option_or_the_file(tmp_path: Path) -> None:
    hex_key = private(tmp_path / "gw.hex", KEY_ENDING_IN_NEWLINE.hex().encode() + b"\n")
    given = {"address": "192.0.2.10", "gateway_key_hex_file": str(hex_key)}
    assert settings_from_options("gw", None, given).gateway_key == Secret(KEY_ENDING_IN_NEWLINE)
    config = tmp_path / "gw.toml"
    config.write_text('address = "192.0.2.10"\ngateway_key_hex_file = "gw.hex"\n')
    assert load_agent_settings("gw", config, {}).gateway_key == Secret(KEY_ENDING_IN_NEWLINE)
    raw = private(tmp_path / "gw.key", KEY_ENDING_IN_NEWLINE)
    config.write_text(f'address = "192.0.2.10"\ngateway_key_hex_file = "gw.hex"\ngateway_key_file = "{raw}"\n')
    with pytest.raises(ValidationError, match="give the gateway key once: gateway_key_file or gateway_key_hex_file"):
        load_agent_settings("gw", config, {})
    result = CliRunner().invoke(
        cli, ["agent", "gw", "--address", "192.0.2.10", "--gateway-key-hex-file", str(hex_key), "--check"]
    )
    assert result.exit_code == 0, result.output


def test_agents_and_the_foreign_aaa_read_a_secret_file_alike(tmp_path: Path) -> None:
    secret = private(tmp_path / "aaa.secret", b"shared-secret\n\n")  # the second newline is the secret's
    fa = settings_from_options(
        "fa", None, {"address": "192.0.2.1", "aaa_servers": ("192.0.2.5",), "secret_file": str(secret)}
    )
    config = tmp_path / "foreign.toml"
    config.write_text(
        '[[clients]]\nname = "fa1"\naddress = "192.0.2.1"\nsecret_file = "aaa.secret"\n'
        '[[realms]]\nname = "home.example"\n[[realms.servers]]\naddress = "192.0.2.5"\nsecret_file = "aaa.secret"\n'
    )
    foreign = load_foreign_settings(config)
    assert fa.aaa_servers[0].secret == foreign.clients[0].secret == Secret(b"shared-secret\n")


# -- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> CliRunner:
    runner = CliRunner(env={"AAA_VPN_DB": str(tmp_path / "vpn.db"), "AAA_VPN_KEY_FILE": None})
    assert runner.invoke(cli, ["db", "init"]).exit_code == 0
    return runner


GATEWAY_ADD = ("gateway", "add", "gw1", "--address", "192.0.2.10", "--mode", "static", "--protects", "10.0.0.0/8")
USER_ADD = ("user", "add", "mn1@home.example", "--home-agent", "192.0.2.2", "--mn-ha-spi", "256")


def _show(run: CliRunner, kind: str, name: str, field: str) -> str:
    result = run.invoke(cli, ["--json", kind, "show", name, "--show-secrets"])
    assert result.exit_code == 0, result.output
    value: str = json.loads(result.stdout)[field]["hex"]
    return value


def test_the_cli_reads_key_files_exactly(run: CliRunner, tmp_path: Path) -> None:
    key = private(tmp_path / "gw.key", KEY_ENDING_IN_NEWLINE)
    mn_ha = private(tmp_path / "mn.mnha", KEY_ENDING_IN_NEWLINE[-16:])
    result = run.invoke(
        cli,
        [*GATEWAY_ADD, "--gateway-key-file", str(key)],
    )
    assert result.exit_code == 0, result.output
    assert _show(run, "gateway", "gw1", "gateway_key") == KEY_ENDING_IN_NEWLINE.hex()
    result = run.invoke(
        cli,
        [*USER_ADD, "--mn-ha-key-file", str(mn_ha), "--mn-aaa-secret", "s"],
    )
    assert result.exit_code == 0, result.output
    assert _show(run, "user", "mn1@home.example", "mn_ha_key") == KEY_ENDING_IN_NEWLINE[-16:].hex()


def test_the_cli_takes_keys_in_hex_files(run: CliRunner, tmp_path: Path) -> None:
    hex_key = private(tmp_path / "gw.hex", KEY_ENDING_IN_NEWLINE.hex().encode() + b"\n")
    result = run.invoke(
        cli,
        [*GATEWAY_ADD, "--gateway-key-hex-file", str(hex_key)],
    )
    assert result.exit_code == 0, result.output
    assert _show(run, "gateway", "gw1", "gateway_key") == KEY_ENDING_IN_NEWLINE.hex()


def test_the_cli_refuses_secret_files_others_can_read_as_the_agents_do(run: CliRunner, tmp_path: Path) -> None:
    secret = private(tmp_path / "fa.secret", b"a-radius-shared-secret\n", mode=0o644)
    result = run.invoke(
        cli, ["client", "add", "fa1", "--address", "192.0.2.1", "--role", "fa", "--secret-file", str(secret)]
    )
    assert result.exit_code == 2
    assert (
        f"--secret-file {secret} is accessible by group or others (mode 0644); fix: chmod 600 {secret}" in result.stderr
    )
    agent = CliRunner().invoke(
        cli, ["agent", "fa", "--address", "192.0.2.1", "--aaa", "192.0.2.5", "--secret-file", str(secret), "--check"]
    )
    assert agent.exit_code == 2
    assert f"{secret} is accessible by group or others (mode 0644); fix: chmod 600 {secret}" in agent.stderr
