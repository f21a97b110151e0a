"""The ``accounting`` group: the RADIUS accounting records the home AAA
stored (RFC 2866) -- ``list``, ``show`` and ``export`` (JSON or CSV), by
user, session and time of the last update."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
from typing import IO, Any

import click

from aaa_vpn.cli.common import App, InvalidInput, emit, emit_table, example, pass_app, with_options
from aaa_vpn.model import AccountingRecord
from aaa_vpn.store import NotFound

#: The columns of ``list`` and of the CSV export, in order (attributes last, as JSON).
COLUMNS = (
    "unique_id",
    "acct_session_id",
    "nai",
    "client",
    "nas",
    "session_id",
    "class_value",
    "started",
    "updated",
    "stopped",
    "session_time",
    "input_octets",
    "output_octets",
    "input_packets",
    "output_packets",
    "terminate_cause",
    "updates",
)


def _time(value: str | None, option: str) -> float | None:
    """An ISO 8601 time (UTC unless it says) or seconds since the epoch."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{option}: {value!r} is neither a time (2026-12-03T10:00:00Z) nor seconds since the epoch"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def record_to_json(record: AccountingRecord) -> dict[str, Any]:
    document = dataclasses.asdict(record)
    for key in ("started", "updated", "stopped"):
        document[key] = _iso(document[key])
    return document


_FILTERS = [
    click.option("--user", "nai", metavar="NAI", help="Only this user's records."),
    click.option("--session", "session_id", metavar="ID", help="Only the records of this aaa_vpn session."),
    click.option("--since", metavar="TIME", help="Updated at or after TIME (ISO 8601, UTC unless it says, or epoch)."),
    click.option("--until", metavar="TIME", help="Updated before TIME."),
    click.option("--limit", type=click.IntRange(1), help="At most this many (the oldest updates first)."),
]


def _records(
    app: App, nai: str | None, session_id: str | None, since: str | None, until: str | None, limit: int | None
) -> list[AccountingRecord]:
    return app.store().list_accounting(
        nai=nai, session_id=session_id, since=_time(since, "--since"), until=_time(until, "--until"), limit=limit
    )


@click.group("accounting", epilog=example("aaa-vpn accounting list --user mn1@home.example"))
def accounting() -> None:
    """RADIUS accounting records (RFC 2866): what each NAS reported of each session."""


@accounting.command("list", epilog=example("aaa-vpn accounting list --user mn1@home.example --since 2026-12-01"))
@with_options(_FILTERS)
@pass_app
def list_(
    app: App, nai: str | None, session_id: str | None, since: str | None, until: str | None, limit: int | None
) -> None:
    """List accounting records, oldest update first."""
    records = _records(app, nai, session_id, since, until, limit)
    rows = [
        {
            "unique_id": r.unique_id,
            "nai": r.nai,
            "nas": r.nas,
            "session": r.session_id,
            "started": _iso(r.started),
            "stopped": _iso(r.stopped),
            "in_octets": r.input_octets,
            "out_octets": r.output_octets,
            "cause": r.terminate_cause,
        }
        for r in records
    ]
    if app.json_output:
        click.echo(json.dumps({"accounting": [record_to_json(r) for r in records]}, indent=2))
        return
    emit_table(app, "accounting", rows)


@accounting.command("show", epilog=example("aaa-vpn accounting show 5d41402abc4b2a76b9719d911017c592"))
@click.argument("unique_id")
@pass_app
def show(app: App, unique_id: str) -> None:
    """Show one record, every attribute its NAS sent included."""
    try:
        record = app.store().get_accounting(unique_id)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    emit(app, record_to_json(record))


@accounting.command("export", epilog=example("aaa-vpn accounting export --format csv --since 2026-12-01 -o dec.csv"))
@with_options(_FILTERS)
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.File("w"), default="-", help="Write here (default: stdout).")
@pass_app
def export(
    app: App,
    nai: str | None,
    session_id: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    fmt: str,
    output: IO[str],
) -> None:
    """Export records: JSON (one document) or CSV (one row per record; times
    in ISO 8601 UTC; the NAS's other attributes as one JSON column)."""
    records = _records(app, nai, session_id, since, until, limit)
    if fmt == "json":
        json.dump(
            {"format": "aaa-vpn-accounting", "version": 1, "records": [record_to_json(r) for r in records]},
            output,
            indent=2,
        )
        output.write("\n")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*COLUMNS, "attributes"])
    for record in records:
        document = record_to_json(record)
        writer.writerow(
            [
                *("" if document[c] is None else document[c] for c in COLUMNS),
                json.dumps(record.attributes, sort_keys=True),
            ]
        )
    output.write(buffer.getvalue())


__all__ = ["accounting", "record_to_json"]
