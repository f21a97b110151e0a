"""The ``db`` group (create, upgrade and check the database) and the
``import`` and ``export`` commands (provisioning data as JSON,
docs/import-format.md)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import click

from aaa_vpn.cli.common import App, InvalidInput, audit, emit, example, pass_app
from aaa_vpn.store import init_store
from aaa_vpn.store.transfer import export_document, import_document, parse_document


@click.group(epilog=example("aaa-vpn db init"))
def db() -> None:
    """Create, upgrade and check the database."""


@db.command("init", epilog=example("aaa-vpn --db /var/lib/aaa-vpn/vpn.db db init"))
@click.option("--force", is_flag=True, help="Replace an existing database (never a key file).")
@click.option("--existing-key", is_flag=True, help="Use the existing key file instead of refusing.")
@pass_app
def db_init(app: App, force: bool, existing_key: bool) -> None:
    """Create a new database and its key file (32 random bytes, mode 0600)."""
    settings = app.settings
    store, key_created = init_store(settings.db_path, settings.key_file, force=force, existing_key=existing_key)
    try:
        if isinstance(settings.db_path, Path):
            os.chmod(settings.db_path, 0o600)  # names and addresses of users are private too
        version = store.schema_version
        shown = store.name
    finally:
        store.close()
    key_note = "created" if key_created else "existing"
    emit(
        app,
        {
            "database": shown,
            "key_file": str(settings.key_file),
            "key_file_created": key_created,
            "schema_version": version,
        },
        f"created database {shown} (schema version {version}) with {key_note} key file"
        f" {settings.key_file}\nback up the key file separately: without it the secrets cannot be read",
    )


@db.command("migrate", epilog=example("aaa-vpn db migrate"))
@pass_app
def db_migrate(app: App) -> None:
    """Upgrade the database schema to this version of aaa_vpn."""
    store = app.store()
    before, after = store.opened_version, store.schema_version
    message = (
        f"migrated {app.settings.shown} from schema version {before} to {after}"
        if before != after
        else f"{app.settings.shown} is up to date (schema version {after})"
    )
    emit(app, {"database": str(app.settings.shown), "from_version": before, "to_version": after}, message)


@db.command("check", epilog=example("aaa-vpn db check"))
@pass_app
def db_check(app: App) -> None:
    """Check integrity, references and that every secret decrypts."""
    store = app.store()
    problems = store.check()
    counts = store.counts()
    version = store.schema_version
    document = {
        "database": str(app.settings.shown),
        "schema_version": version,
        "generation": store.generation(),
        "counts": counts,
        "problems": problems,
        "ok": not problems,
    }
    summary = ", ".join(f"{n} {table}" for table, n in counts.items())
    text = f"{app.settings.shown}: schema version {version}; {summary}\n" + (
        "\n".join(f"problem: {p}" for p in problems) if problems else "ok"
    )
    emit(app, document, text)
    if problems:
        raise click.exceptions.Exit(1)


class _DryRun(Exception):
    """Raised inside the import transaction to roll it back on purpose."""


@click.command("import", epilog=example("aaa-vpn import provisioning.json --dry-run"))
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--replace", is_flag=True, help="Also delete records the file does not name (default: merge).")
@click.option("--dry-run", is_flag=True, help="Check and report, then roll back.")
@pass_app
def import_(app: App, file: str, replace: bool, dry_run: bool) -> None:
    """Import provisioning data from JSON, all or nothing.

    FILE ('-': stdin) is in the format of docs/import-format.md, as written by
    'aaa-vpn export'. Records are added or updated; with --replace, records the
    file does not name are deleted too.
    """
    try:
        if file == "-":
            text = sys.stdin.buffer.read()
        else:
            with open(file, "rb") as handle:
                text = handle.read()
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None
    document = parse_document(text, "stdin" if file == "-" else file)
    store = app.store()
    try:
        with store.transaction():
            summary = import_document(store, document, replace=replace)
            audit(store, "import", "stdin" if file == "-" else file, {"replace": replace, **summary.to_json()})
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    result = summary.to_json()
    lines = [
        f"{kind}: {c['added']} added, {c['updated']} updated, {c['unchanged']} unchanged, {c['deleted']} deleted"
        for kind, c in result.items()
    ]
    lines.append("dry run: nothing was written" if dry_run else f"imported {file}")
    emit(app, {"dry_run": dry_run, "replace": replace, "summary": result}, "\n".join(lines))


@click.command("export", epilog=example("aaa-vpn export backup.json --with-secrets"))
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--with-secrets", is_flag=True, help="Include secrets (the file is then created with mode 0600).")
@pass_app
def export(app: App, file: str | None, with_secrets: bool) -> None:
    """Export provisioning data as JSON.

    Writes to FILE, or stdout. Secrets are left out unless --with-secrets is given.
    """
    text = json.dumps(export_document(app.store(), with_secrets=with_secrets), indent=2) + "\n"
    if file is None or file == "-":
        click.echo(text, nl=False)
        return
    with _private_file(file, private=with_secrets) as handle:
        handle.write(text)
    if not app.json_output:
        click.echo(f"exported to {file}" + (" (with secrets)" if with_secrets else ""), err=True)


@contextmanager
def _private_file(path: str, *, private: bool) -> Iterator[IO[str]]:
    """Open ``path`` for writing; mode 0600 when it will hold secrets."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
        if private:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yield handle
