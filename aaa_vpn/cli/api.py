"""``aaa-vpn serve api`` (the provisioning API and the user page, docs/api.md)
and the ``api`` group: operator tokens, users' web passwords, what users may
choose on their page, the audit log and the OpenAPI document.

The server is imported when it starts (it pulls in aiohttp), in one place:
:func:`_run_api_server`."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from aaa_vpn.cli.common import (
    App,
    InvalidInput,
    StoreFailure,
    audit,
    emit,
    emit_table,
    example,
    exit_with,
    pass_app,
)
from aaa_vpn.model import ValidationError
from aaa_vpn.secret_files import SecretForm, decode_secret, read_private
from aaa_vpn.service import openapi
from aaa_vpn.service.webauth import Role, check_password, hash_password, load_tokens, new_token, token_line

_ROLES = click.Choice([role.value for role in Role])


def _run_api_server(settings: Any) -> int:
    try:
        server = importlib.import_module("aaa_vpn.net.api_server")
    except ImportError as exc:
        raise StoreFailure(f"the API server is not available: {exc}") from None
    return int(server.run_api_server(settings))


@click.command(
    "api",
    epilog=example(
        "aaa-vpn --db /var/lib/aaa-vpn/vpn.db serve api --listen 192.0.2.10 --port 8443 \\",
        "    --tokens-file /etc/aaa-vpn/api-tokens --tls-cert api.pem --tls-key api.key --coa-source 192.0.2.10",
    ),
)
@click.option("--listen", default="127.0.0.1", show_default=True, metavar="ADDR", help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8443, show_default=True, help="TCP port (0: any free one)."
)
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Operator tokens, one 'NAME ROLES sha256:HEX' line each, mode 0600 (made by 'aaa-vpn api token').",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Serve HTTPS with this certificate chain (PEM); without it, put a TLS proxy in front.",
)
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="The certificate's private key.")
@click.option(
    "--coa-source",
    metavar="ADDR",
    default="0.0.0.0",
    show_default=True,
    help="Send CoA/Disconnect-Requests from this address (the agents accept only their AAA server's).",
)
@click.option(
    "--coa-timeout", type=click.FloatRange(min=0.01), default=2.0, show_default=True, help="Seconds per attempt."
)
@click.option("--coa-retries", type=click.IntRange(min=0), default=2, show_default=True, help="Retransmissions.")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@pass_app
def serve_api(
    app: App,
    listen: str,
    port: int,
    tokens_file: Path,
    tls_cert: Path | None,
    tls_key: Path | None,
    coa_source: str,
    coa_timeout: float,
    coa_retries: int,
    log_level: str,
) -> None:
    """Run the provisioning API (HTTP, OpenAPI at /openapi.json) and the
    users' own page on the VPN database."""
    import logging

    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("give --tls-cert and --tls-key together")
    try:
        tokens = load_tokens(tokens_file)
    except (ValidationError, OSError) as exc:
        raise InvalidInput(str(exc)) from None
    if tls_key is not None:
        read_private(tls_key, "--tls-key")  # refused when others can read it, like every key file
    logging.getLogger().setLevel(log_level.upper())
    server = importlib.import_module("aaa_vpn.net.api_server")
    settings = server.ApiSettings(
        db_path=app.settings.db_path,
        key_file=app.settings.key_file,
        tokens=tokens,
        listen=listen,
        port=port,
        coa_source=coa_source,
        coa_timeout=coa_timeout,
        coa_retries=coa_retries,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    app.store().close()  # the database opens (key file, schema) before the server says it listens
    exit_with(_run_api_server(settings))


@click.group("api", epilog=example("aaa-vpn api token alice --role provisioning --tokens-file api-tokens"))
def api() -> None:
    """The provisioning API's operators, the users' web passwords and page, the audit log."""


@api.command("token", epilog=example("aaa-vpn api token alice --role provisioning --role sessions --tokens-file t"))
@click.argument("name")
@click.option("--role", "roles", type=_ROLES, multiple=True, required=True, help="A role (repeat for more).")
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the token's line to this file (created with mode 0600); else print the line.",
)
@pass_app
def token(app: App, name: str, roles: tuple[str, ...], tokens_file: Path | None) -> None:
    """Make an operator token: the token is printed once; only its SHA-256
    digest goes into the tokens file."""
    value = new_token()
    line = token_line(name, frozenset(Role(r) for r in roles), value)
    if tokens_file is not None:
        fd = os.open(tokens_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as out:
            out.write(line + "\n")
    document = {"name": name, "roles": sorted(roles), "token": value}
    if tokens_file is None:
        document["line"] = line
    text = f"token for {name} (shown once): {value}"
    if tokens_file is None:
        text += f"\nadd this line to the tokens file:\n{line}"
    emit(app, document, text)


@api.command("password", epilog=example("aaa-vpn api password mn1@home.example --password-file pw"))
@click.argument("nai")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the password from a file of mode 0600 ('-': stdin); else it is asked for.",
)
@click.option("--remove", is_flag=True, help="Remove the user's web password (no more sign-in).")
@pass_app
def password(app: App, nai: str, password_file: str | None, remove: bool) -> None:
    """Set a user's web password for their own page (stored as a scrypt
    verifier only; never the MN-AAA secret)."""
    store = app.store()
    if remove:
        store.get_user(nai)
        with store.transaction():
            removed = store.delete_web_credential(nai)
            audit(store, "users.web-credential.delete", nai)
        emit(app, {"nai": nai, "web_credential": False, "removed": removed}, f"removed the web password of {nai}")
        return
    if password_file == "-":
        text = decode_secret(sys.stdin.buffer.read(), SecretForm.TEXT, "--password-file (stdin)")
    elif password_file is not None:
        text = decode_secret(read_private(Path(password_file), "--password-file"), SecretForm.TEXT, password_file)
    else:
        text = click.prompt("Web password", hide_input=True, confirmation_prompt=True).encode()
    try:
        verifier = hash_password(check_password(text.decode("utf-8")))
    except UnicodeDecodeError:
        raise InvalidInput("the password is not UTF-8 text") from None
    with store.transaction():
        store.set_web_credential(nai, verifier, time.time())
        audit(store, "users.web-credential.set", nai)
    emit(app, {"nai": nai, "web_credential": True}, f"set the web password of {nai}")


@api.command(
    "allow",
    epilog=example("aaa-vpn api allow mn1@home.example --gateway gw1 --gateway gw2 --service gold --qos voice"),
)
@click.argument("nai")
@click.option("--gateway", "gateways", multiple=True, metavar="NAME", help="A gateway the user may choose.")
@click.option("--service", "services", multiple=True, metavar="NAME", help="A security service the user may choose.")
@click.option("--qos", "qos", multiple=True, metavar="NAME", help="A QoS class the user may choose.")
@pass_app
def allow(app: App, nai: str, gateways: tuple[str, ...], services: tuple[str, ...], qos: tuple[str, ...]) -> None:
    """Set what a user may choose on their own page (replaces what was
    allowed; a record's current choice always stays)."""
    store = app.store()
    for name in gateways:
        store.get_gateway(name)
    for name in services:
        store.get_service(name)
    for name in qos:
        store.get_qos(name)
    allowed = {"gateway": list(gateways), "service": list(services), "qos": list(qos)}
    with store.transaction():
        store.set_self_service(nai, allowed)
        audit(store, "users.self-service.set", nai, dict(allowed))
    emit(app, {"nai": nai, **store.get_self_service(nai)}, f"set what {nai} may choose")


@api.command("audit", epilog=example("aaa-vpn api audit --limit 20"))
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@pass_app
def audit_log(app: App, limit: int) -> None:
    """The audit log: who changed what, when (never a secret)."""
    rows = app.store().list_audit(limit=limit)
    emit_table(
        app,
        "audit",
        [
            {
                "id": i,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
                "actor": actor,
                "action": action,
                "target": target,
                "detail": detail,
            }
            for i, at, actor, action, target, detail in rows
        ],
    )


@api.command("openapi", epilog=example("aaa-vpn api openapi -o docs/api.json"))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
def openapi_document(output: Path | None) -> None:
    """Print the API's OpenAPI document (what /openapi.json serves)."""
    text = json.dumps(openapi.document(), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)


__all__ = ["api", "serve_api"]
