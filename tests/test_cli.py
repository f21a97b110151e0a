"""The ``aaa-vpn`` command line, through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from aaa_vpn.cli import cli
from aaa_vpn.service.config import HomeServerSettings
from aaa_vpn.store.schema import SCHEMA_VERSION

REPO = Path(__file__).resolve().parent.parent
NAI = "mn1@home.example"

# Distinctive secrets, to look for in every output.
MN_AAA = "mn-aaa-secret-marker-1"
MN_HA_HEX = "00112233445566778899aabbccddeeff"
CLIENT_SECRET = "client-secret-marker-2"


class Cli:
    """Runs commands against one database, with a clean environment."""

    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        """An SQLite file in ``tmp_path``, or the PostgreSQL database at ``url``."""
        self.db: Path | str = tmp_path / "vpn.db" if url is None else url
        self.key = tmp_path / "vpn.db.key"
        self.runner = CliRunner()
        self.env: dict[str, str | None] = {
            "AAA_VPN_DB": str(self.db),
            "AAA_VPN_KEY_FILE": None if url is None else str(self.key),
        }

    def __call__(self, *args: str, code: int = 0, input: str | bytes | None = None) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env, input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self("--json", *args).stdout)


@pytest.fixture(params=["sqlite", "postgres"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    """The CLI on a new database of each engine."""
    runner = Cli(tmp_path, request.getfixturevalue("pg_url") if request.param == "postgres" else None)
    runner("db", "init")
    return runner


@pytest.fixture
def sqlite_run(tmp_path: Path) -> Cli:
    runner = Cli(tmp_path)
    runner("db", "init")
    return runner


@pytest.fixture
def provisioned(run: Cli) -> Cli:
    run(
        "user",
        "add",
        NAI,
        "--home-agent",
        "192.0.2.2",
        "--home-address",
        "198.51.100.10",
        "--mn-aaa-secret",
        MN_AAA,
        "--mn-ha-spi",
        "256",
        "--mn-ha-key-hex",
        MN_HA_HEX,
    )
    run(
        "client",
        "add",
        "fa1",
        "--address",
        "192.0.2.1",
        "--role",
        "fa",
        "--secret",
        CLIENT_SECRET,
        "--domain",
        "visited.example",
        "--flavour",
        "3gpp2",
        "--coa-port",
        "3799",
    )
    run(
        "gateway",
        "add",
        "gw1",
        "--address",
        "203.0.113.1",
        "--mode",
        "dynamic",
        "--protects",
        "10.1.0.0/16",
        "--gateway-key-hex",
        "ab" * 32,
    )
    run("service", "add", "gold", "--key-mode", "ikev2")
    run("qos", "add", "voice", "--dscp", "46")
    run(
        "vpn",
        "add",
        "--user",
        NAI,
        "--correspondent",
        "10.1.0.0/16",
        "--gateway",
        "gw1",
        "--service",
        "gold",
        "--qos",
        "voice",
    )
    return run


def _secrets_in(text: str) -> list[str]:
    return [s for s in (MN_AAA, MN_HA_HEX, CLIENT_SECRET, "ab" * 32) if s in text]


# -- db ------------------------------------------------------------------------------------------------


def test_db_init_creates_private_files_once(tmp_path: Path) -> None:
    run = Cli(tmp_path)
    out = run.json("db", "init")
    assert out["key_file_created"] is True and out["schema_version"] == SCHEMA_VERSION
    assert stat.S_IMODE(run.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(run.db.stat().st_mode) == 0o600
    key = run.key.read_bytes()
    result = run("db", "init", code=1)
    assert result.stderr == f"Error: database {run.db} exists already (use --force to replace it)\n"
    out = run.json("db", "init", "--force")
    assert out["key_file_created"] is False
    assert run.key.read_bytes() == key


def test_db_migrate_and_check(run: Cli) -> None:
    migrated = run.json("db", "migrate")
    assert migrated == {"database": str(run.db), "from_version": SCHEMA_VERSION, "to_version": SCHEMA_VERSION}
    check = run.json("db", "check")
    assert check["ok"] is True and check["problems"] == []
    assert "ok" in run("db", "check").stdout


def test_missing_database_and_key_problems(run: Cli, tmp_path: Path) -> None:
    result = run("--db", str(tmp_path / "nope.db"), "user", "list", code=1)
    assert "does not exist" in result.stderr and "db init" in result.stderr
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    result = run("--key-file", str(other), "user", "list", code=1)
    assert result.stderr.startswith("Error: key file does not match this database")
    run.key.chmod(0o644)
    result = run("user", "list", code=1)
    assert "chmod 600" in result.stderr


# -- records -----------------------------------------------------------------------------------------------


def test_provisioning_round(provisioned: Cli) -> None:
    run = provisioned
    user = run.json("user", "show", NAI)
    assert user["home_address"] == "198.51.100.10"
    assert [r["gateway"] for r in user["vpn_records"]] == ["gw1"]
    assert run.json("client", "show", "fa1")["flavour"] == "3gpp2"
    assert run.json("gateway", "show", "gw1")["protected_prefixes"] == ["10.1.0.0/16"]
    assert run.json("service", "show", "gold")["key_mode"] == "ikev2"
    assert run.json("qos", "show", "voice")["dscp"] == 46
    assert run.json("vpn", "list", "--user", NAI)["vpn_records"][0]["qos"] == "voice"
    assert run.json("vpn", "list", "--user", "other@home.example")["vpn_records"] == []

    run("user", "change", NAI, "--no-home-address", "--disable")
    user = run.json("user", "show", NAI)
    assert user["home_address"] is None and user["enabled"] is False
    run("client", "change", "fa1", "--address", "192.0.2.0/28", "--no-require-message-authenticator")
    assert run.json("client", "show", "fa1")["network"] == "192.0.2.0/28"
    run("gateway", "change", "gw1", "--mode", "static", "--protects", "10.8.0.0/16", "--protects", "10.9.0.0/16")
    assert run.json("gateway", "show", "gw1")["protected_prefixes"] == ["10.8.0.0/16", "10.9.0.0/16"]
    run("service", "change", "gold", "--sa-lifetime", "600")
    run("qos", "change", "voice", "--rate-kbps", "128")
    run("vpn", "change", "1", "--no-qos", "--correspondent", "10.3.0.0/16")
    assert run.json("vpn", "show", "1")["qos"] is None

    # Text output lists what was added.
    assert NAI in run("user", "list").stdout
    assert "gw1" in run("gateway", "list").stdout

    run("gateway", "delete", "gw1", code=1)
    run("vpn", "delete", "1")
    for kind, name in (("gateway", "gw1"), ("service", "gold"), ("qos", "voice"), ("client", "fa1"), ("user", NAI)):
        run(kind, "delete", name)
        run(kind, "show", name, code=1)
    assert run.json("user", "list") == {"users": []}


def test_secrets_only_shown_when_asked(provisioned: Cli, tmp_path: Path) -> None:
    run = provisioned
    quiet = [
        run(*args).output
        for args in (
            ("user", "list"),
            ("user", "show", NAI),
            ("client", "list"),
            ("client", "show", "fa1"),
            ("gateway", "list"),
            ("gateway", "show", "gw1"),
            ("export",),
            ("--json", "user", "list"),
            ("--json", "user", "show", NAI),
            ("--json", "client", "list"),
            ("--json", "gateway", "show", "gw1"),
            ("--json", "export"),
        )
    ]
    assert [_secrets_in(text) for text in quiet] == [[]] * len(quiet)
    assert _secrets_in(run("user", "show", NAI, "--show-secrets").stdout) == [MN_AAA, MN_HA_HEX]
    assert _secrets_in(run("client", "list", "--show-secrets").stdout) == [CLIENT_SECRET]
    assert _secrets_in(run("gateway", "show", "gw1", "--show-secrets").stdout) == ["ab" * 32]
    assert len(_secrets_in(run("export", "--with-secrets").stdout)) == 4
    # Export to a file with secrets: private file.
    path = tmp_path / "backup.json"
    path.write_text("")
    path.chmod(0o644)
    run("export", str(path), "--with-secrets")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(_secrets_in(path.read_text())) == 4


def test_generated_secret_printed_once_only_when_asked(run: Cli) -> None:
    result = run("client", "add", "fa1", "--address", "192.0.2.1", "--role", "fa", "--generate")
    secret = run.json("client", "show", "fa1", "--show-secrets")["secret"]["text"]
    assert secret not in result.output
    assert "--show-secret" in result.stderr
    out = run.json("client", "add", "fa2", "--address", "192.0.2.2", "--role", "fa", "--generate", "--show-secret")
    generated = out["generated_secrets"]["RADIUS shared secret"]["text"]
    assert len(generated) >= 16
    assert run.json("client", "show", "fa2", "--show-secrets")["secret"]["text"] == generated
    assert generated not in run("client", "show", "fa2").output
    # Text mode says it once, too.
    text = run(
        "gateway",
        "add",
        "gw1",
        "--address",
        "203.0.113.1",
        "--mode",
        "static",
        "--protects",
        "10.0.0.0/8",
        "--generate",
        "--show-secret",
    ).stdout
    assert "generated gateway key: hex " in text


def test_secret_sources(run: Cli, tmp_path: Path) -> None:
    secret_file = tmp_path / "fa.secret"
    secret_file.write_text("from-a-file-secret\n")
    secret_file.chmod(0o600)
    run("client", "add", "fa1", "--address", "192.0.2.1", "--role", "fa", "--secret-file", str(secret_file))
    assert run.json("client", "show", "fa1", "--show-secrets")["secret"]["text"] == "from-a-file-secret"
    run(
        "client",
        "add",
        "fa2",
        "--address",
        "192.0.2.2",
        "--role",
        "fa",
        "--secret-file",
        "-",
        input="from-stdin-secret\n",
    )
    assert run.json("client", "show", "fa2", "--show-secrets")["secret"]["text"] == "from-stdin-secret"
    run("client", "change", "fa2", "--secret-hex", "0x" + "41" * 16)
    assert run.json("client", "show", "fa2", "--show-secrets")["secret"] == {"hex": "41" * 16, "text": "A" * 16}
    result = run(
        "client",
        "add",
        "fa3",
        "--address",
        "192.0.2.3",
        "--role",
        "fa",
        "--secret",
        "x" * 16,
        "--secret-hex",
        "41" * 16,
        code=2,
    )
    assert "give the RADIUS shared secret once" in result.stderr
    result = run("client", "add", "fa3", "--address", "192.0.2.3", "--role", "fa", code=2)
    assert "the RADIUS shared secret is required" in result.stderr
    result = run("client", "add", "fa3", "--address", "192.0.2.3", "--role", "fa", "--secret-hex", "xyz", code=2)
    assert "not hexadecimal" in result.stderr


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("user", "add", "not-a-nai", "--home-agent", "192.0.2.2", "--mn-ha-spi", "256", "--generate"),
            2,
            "Error: invalid NAI 'not-a-nai'",
        ),
        (
            ("user", "add", NAI, "--home-agent", "300.1.1.1", "--mn-ha-spi", "256", "--generate"),
            2,
            "Error: invalid home agent '300.1.1.1'",
        ),
        (("user", "add", NAI, "--home-agent", "192.0.2.2", "--mn-ha-spi", "12", "--generate"), 2, "SPI"),
        (
            (
                "user",
                "add",
                NAI,
                "--home-agent",
                "192.0.2.2",
                "--mn-ha-spi",
                "256",
                "--generate",
                "--mn-ha-key-hex",
                "00",
            ),
            2,
            "MN-HA key is too short",
        ),
        (("user", "add", NAI), 2, "Missing option '--home-agent'"),
        (("client", "add", "fa1", "--address", "192.0.2.1/24", "--role", "fa", "--generate"), 2, "host bits set"),
        (("client", "add", "fa1", "--address", "192.0.2.1", "--role", "xx", "--generate"), 2, "Invalid value"),
        (("user", "show", "nobody@home.example"), 1, "Error: no user 'nobody@home.example'"),
        (("vpn", "show", "99"), 1, "Error: no VPN record 99"),
        (
            ("vpn", "add", "--user", NAI, "--correspondent", "10.0.0.0/8", "--gateway", "gw1", "--service", "gold"),
            1,
            "Error: the VPN record names user",
        ),
        (("qos", "add", "voice", "--dscp", "64"), 2, "Error: invalid DSCP 64"),
        (("nosuchcommand",), 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_exit_code(run: Cli, args: tuple[str, ...], code: int, message: str) -> None:
    result = run(*args, code=code)
    assert message in result.stderr
    assert result.stdout == ""


def test_unicode_nais_are_provisioned_in_nfc_and_refused_otherwise(run: Cli) -> None:
    """RFC 7542 allows UTF-8 NAIs; the CLI takes them in NFC and names the NFC
    form of one written otherwise (docs/protocol.md section 1, "NAIs")."""
    nai = "jos\u00e9@b\u00fccher.example"
    rest = ("--home-agent", "192.0.2.2", "--mn-ha-spi", "256", "--generate")
    run("user", "add", nai, *rest)
    assert run.json("user", "show", nai)["nai"] == nai
    assert nai in run("user", "list").stdout
    decomposed = "jose\u0301@b\u00fccher.example"
    result = run("user", "add", decomposed, *rest, code=2)
    assert "not in Unicode Normalization Form C" in result.stderr and repr(nai) in result.stderr
    result = run("user", "add", "mn1@localhost", *rest, code=2)
    assert "Error: invalid NAI 'mn1@localhost': the realm 'localhost' needs at least two labels" in result.stderr


def test_duplicate_and_reference_errors(provisioned: Cli) -> None:
    run = provisioned
    assert "exists already" in run("qos", "add", "voice", code=1).stderr
    result = run("service", "delete", "gold", code=1)
    assert result.stderr == f"Error: service 'gold' is used by VPN record(s) 1 ({NAI}); change or delete those first\n"


def test_corrupt_secret_is_an_error_not_a_traceback(provisioned: Cli) -> None:
    # A secret sealed for another row: the database's own tools could do this.
    if isinstance(provisioned.db, Path):
        import sqlite3

        conn = sqlite3.connect(provisioned.db)
        with conn:
            (blob,) = conn.execute("SELECT secret FROM clients").fetchone()
            conn.execute("UPDATE users SET mn_aaa_secret = ?", (blob,))
        conn.close()
    else:
        import psycopg

        with psycopg.connect(provisioned.db, autocommit=True) as pg:
            pg.execute("UPDATE users SET mn_aaa_secret = (SELECT secret FROM clients LIMIT 1)")
    result = provisioned("user", "list", code=1)
    assert "cannot be decrypted" in result.stderr
    check = provisioned("--json", "db", "check", code=1)
    assert json.loads(check.stdout)["ok"] is False


# -- import / export ------------------------------------------------------------------------------------------


def test_export_import_round_trip(provisioned: Cli, tmp_path: Path) -> None:
    backup = tmp_path / "backup.json"
    provisioned("export", str(backup), "--with-secrets")
    document = json.loads(backup.read_text())
    assert document["format"] == "aaa-vpn" and document["version"] == 1 and document["secrets_included"] is True

    other = Cli(tmp_path / "other")
    (tmp_path / "other").mkdir()
    other("db", "init")
    out = other.json("import", str(backup))
    assert out["summary"]["users"]["added"] == 1 and out["summary"]["vpn_records"]["added"] == 1
    assert json.loads(other("export", "--with-secrets").stdout) == document
    # Again: nothing changes.
    out = other.json("import", str(backup))
    assert all(kind["unchanged"] == 1 for kind in out["summary"].values())


def test_foreign_aaa_and_proxy_roles_through_cli_export_and_import(run: Cli, tmp_path: Path) -> None:
    # The two proxy roles are distinct all the way: CLI, store, export and import.
    aaaf = ("aaaf", "--address", "192.0.2.53", "--role", "foreign-aaa", "--domain", "visited.example")
    run("client", "add", *aaaf, "--secret", CLIENT_SECRET)
    run("client", "add", "hub", "--address", "192.0.2.54", "--role", "proxy", "--secret", CLIENT_SECRET)
    assert run.json("client", "show", "aaaf")["role"] == "foreign-aaa"
    run("client", "change", "hub", "--role", "foreign-aaa")
    assert run.json("client", "show", "hub")["role"] == "foreign-aaa"
    run("client", "change", "hub", "--role", "proxy")
    document = json.loads(run("export", "--with-secrets").stdout)
    assert {c["name"]: c["role"] for c in document["clients"]} == {"aaaf": "foreign-aaa", "hub": "proxy"}
    other = Cli(tmp_path / "other")
    (tmp_path / "other").mkdir()
    other("db", "init")
    other("import", "-", input=json.dumps(document))
    assert {c["name"]: c["role"] for c in other.json("client", "list")["clients"]} == {
        "aaaf": "foreign-aaa",
        "hub": "proxy",
    }
    document["clients"][0]["role"] = "foreign_aaa"
    result = other("import", "-", input=json.dumps(document), code=2)
    assert "'foreign-aaa'" in result.output + result.stderr


def test_import_from_stdin_merge_replace_and_dry_run(provisioned: Cli) -> None:
    run = provisioned
    exported = run("export").stdout  # no secrets: merge keeps the stored ones
    document = json.loads(exported)
    document["qos_classes"].append({"name": "bulk", "dscp": 8})
    out = json.loads(run("--json", "import", "-", input=json.dumps(document)).stdout)
    assert out["summary"]["qos_classes"] == {"added": 1, "updated": 0, "unchanged": 1, "deleted": 0}
    assert run.json("user", "show", NAI, "--show-secrets")["mn_aaa_secret"]["text"] == MN_AAA

    small = {"format": "aaa-vpn", "version": 1, "qos_classes": [{"name": "bulk", "dscp": 8}]}
    path = run.key.parent / "small.json"
    path.write_text(json.dumps(small))
    out = run.json("import", str(path), "--replace", "--dry-run")
    assert out["dry_run"] is True and out["summary"]["users"]["deleted"] == 1
    assert run.json("user", "list")["users"] != []  # rolled back
    assert "dry run" in run("import", str(path), "--replace", "--dry-run").stdout
    run("import", str(path), "--replace")
    assert run.json("user", "list")["users"] == []
    assert [q["name"] for q in run.json("qos", "list")["qos_classes"]] == ["bulk"]


def test_import_is_all_or_nothing(provisioned: Cli, tmp_path: Path) -> None:
    run = provisioned
    before = run("export", "--with-secrets").stdout
    generation = run.json("db", "check")["generation"]
    document = json.loads(before)
    document["qos_classes"].append({"name": "bulk", "dscp": 8})
    document["users"][0]["home_agent"] = "192.0.2.99"
    document["gateways"].append(
        {
            "name": "gw2",
            "address": "203.0.113.2",
            "mode": "sideways",
            "protected_prefixes": ["10.7.0.0/16"],
            "gateway_key": {"hex": "00" * 32},
        }
    )
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    result = run("import", str(path), code=2)
    assert result.stderr.startswith("Error: gateways[1] (gw2): field 'mode' must be one of")
    assert run("export", "--with-secrets").stdout == before
    assert run.json("db", "check")["generation"] == generation

    path.write_text("{not json")
    assert "is not valid JSON" in run("import", str(path), code=2).stderr
    assert "cannot read" in run("import", str(tmp_path / "missing.json"), code=2).stderr


# -- help, serve, subprocess ---------------------------------------------------------------------------------------


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def test_every_command_has_an_example(tmp_path: Path) -> None:
    runner = Cli(tmp_path)
    commands = _commands(cli)
    assert ("user", "add") in commands and ("serve", "home") in commands and ("import",) in commands
    for path in commands:
        text = runner(*path, "--help").stdout
        assert re.search(r"Example:\n +aaa-vpn ", text), path


def test_serve_home_passes_settings(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[HomeServerSettings] = []
    module = types.ModuleType("aaa_vpn.net.home_server")

    def run_home_server(settings: HomeServerSettings, reloader: Callable[[], HomeServerSettings]) -> int:
        received.append(settings)
        assert reloader() == settings  # SIGHUP reads the same settings again: the options given still win
        return 3 if settings.port == 0 else 0

    module.run_home_server = run_home_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aaa_vpn.net.home_server", module)
    run(
        "serve",
        "home",
        "--listen",
        "127.0.0.1",
        "--port",
        "18120",
        "--workers",
        "3",
        "--log-format",
        "json",
        "--dup-cache-seconds",
        "5",
        "--session-lifetime",
        "600",
        "--log-level",
        "debug",
    )
    assert received == [
        HomeServerSettings(
            db_path=run.db,
            key_file=run.key,
            listen="127.0.0.1",
            port=18120,
            workers=3,
            log_level="debug",
            log_format="json",
            dup_cache_seconds=5.0,
            session_lifetime=600,
        )
    ]
    run("serve", "home")
    assert received[1].workers >= 1 and received[1].port == 1812 and received[1].listen == "0.0.0.0"
    run("serve", "home", "--workers", "0", code=2)
    run("serve", "home", "--port", "0", code=3)  # the server's exit status is passed on


def test_key_file_option_and_environment(tmp_path: Path) -> None:
    runner = Cli(tmp_path)
    key = tmp_path / "keys" / "vpn.key"
    key.parent.mkdir()
    runner.env["AAA_VPN_KEY_FILE"] = str(key)
    runner("db", "init")
    assert key.exists() and not runner.key.exists()
    runner("qos", "add", "voice")
    runner.env["AAA_VPN_KEY_FILE"] = None
    assert "does not exist" in runner("qos", "list", code=1).stderr
    assert "voice" in runner("--key-file", str(key), "qos", "list").stdout


def test_real_entry_point_as_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "AAA_VPN_DB": str(tmp_path / "vpn.db")}
    env.pop("AAA_VPN_KEY_FILE", None)

    def aaa_vpn(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aaa_vpn.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = aaa_vpn("--json", "db", "init")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema_version"] == SCHEMA_VERSION
    done = aaa_vpn("user", "add", NAI, "--home-agent", "192.0.2.2", "--mn-ha-spi", "256", "--generate")
    assert done.returncode == 0, done.stderr
    listed = aaa_vpn("--json", "user", "list")
    assert json.loads(listed.stdout)["users"][0]["nai"] == NAI
    failed = aaa_vpn("user", "show", "nobody@home.example")
    assert (failed.returncode, failed.stdout, failed.stderr) == (1, "", "Error: no user 'nobody@home.example'\n")
    invalid = aaa_vpn("qos", "add", "bad name")
    assert invalid.returncode == 2 and invalid.stderr.startswith("Error: invalid QoS class name")
    assert "Traceback" not in failed.stderr + invalid.stderr
    version = aaa_vpn("--version")
    assert version.stdout.startswith("aaa-vpn ")


# -- the TOML settings file ---------------------------------------------------------------------


def test_config_file_supplies_db_and_serve_defaults(tmp_path: Path) -> None:
    from aaa_vpn.service.config import ConfigFile

    config = tmp_path / "aaa-vpn.toml"
    config.write_text(
        f'db = "{tmp_path / "from-config.db"}"\n'
        '[serve.home]\nlisten = "127.0.0.1"\nport = 18999\nworkers = 3\nlog_format = "json"\n'
    )
    loaded = ConfigFile.load(config)
    assert loaded.db_path == tmp_path / "from-config.db"
    assert loaded.serve_home == {"listen": "127.0.0.1", "port": 18999, "workers": 3, "log_format": "json"}
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "db", "init"], env={"AAA_VPN_DB": ""})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-config.db").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db = [1", "not valid TOML"),
        ("colour = 'blue'", "colour is not a known setting"),
        ("[serve.home]\nport = 'x'", "serve.home.port has the wrong type"),
        ("[serve.home]\nworkers = true", "serve.home.workers has the wrong type"),
        ("[serve.home]\nthreads = 4", "serve.home.threads is not a known setting"),
        ("[serve.foreign]\nport = 1", "may only hold a [serve.home] table"),
    ],
)
def test_bad_config_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = CliRunner().invoke(cli, ["--config", str(config), "user", "list"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "user", "list"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_config_file_serve_defaults_yield_to_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[HomeServerSettings] = []
    module = types.ModuleType("aaa_vpn.net.home_server")
    module.run_home_server = lambda settings, _reloader=None: received.append(settings) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aaa_vpn.net.home_server", module)
    config = tmp_path / "aaa-vpn.toml"
    config.write_text('[serve.home]\nlisten = "127.0.0.1"\nport = 18999\nworkers = 3\nsession_lifetime = 600\n')
    db = tmp_path / "vpn.db"
    result = CliRunner().invoke(cli, ["--config", str(config), "--db", str(db), "serve", "home", "--port", "19000"])
    assert result.exit_code == 0, result.output
    (settings,) = received
    assert (settings.listen, settings.port, settings.workers, settings.session_lifetime) == ("127.0.0.1", 19000, 3, 600)
    assert settings.db_path == db


# -- PostgreSQL ------------------------------------------------------------------------------------------


def test_postgres_databases_are_named_by_url_and_need_their_key_file(pg_url: str, tmp_path: Path) -> None:
    # A password in the URL (trust authentication ignores it) is never printed.
    with_password = pg_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2-secret@")
    run = Cli(tmp_path, with_password)
    run.env["AAA_VPN_KEY_FILE"] = None
    result = run("db", "init", code=1)
    assert "a PostgreSQL database needs its key file named" in result.stderr
    run.env["AAA_VPN_KEY_FILE"] = str(run.key)
    out = run.json("db", "init")
    assert out["schema_version"] == SCHEMA_VERSION and out["key_file_created"] is True
    assert "hunter2" not in json.dumps(out) and out["database"].startswith("postgresql://postgres@/")
    again = run("db", "init", code=1)
    assert "holds an aaa_vpn schema already (use --force to replace it)" in again.stderr
    assert "hunter2" not in again.stderr
    run("qos", "add", "voice", "--dscp", "46")
    assert run.json("db", "init", "--force")["key_file_created"] is False
    assert run.json("qos", "list") == {"qos_classes": []}
    check = run("db", "check")
    assert "hunter2" not in check.stdout and "ok" in check.stdout
    bad = run("--db", "postgresql:/nohost", "user", "list", code=2)
    assert "a PostgreSQL database is named postgresql://" in bad.stderr


def test_a_postgres_database_that_is_not_ours_is_refused(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute("CREATE TABLE users (name TEXT)")
    run = Cli(tmp_path, pg_url)
    result = run("db", "init", code=1)
    assert "holds tables named like aaa_vpn's but is not an aaa_vpn database" in result.stderr
    with psycopg.connect(pg_url, autocommit=True) as pg:
        assert pg.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone() == (0,)
