"""``aaa-vpn install-units``: write the systemd units of the daemons
(:mod:`aaa_vpn.service.units`) and the ``sysusers.d`` file of their user.

Writes files and prints what to run next; it starts nothing and never
touches a file it would not write (``--dry-run`` only prints).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from aaa_vpn.cli.common import App, InvalidInput, emit, example, pass_app
from aaa_vpn.service import units


def _default_executable() -> str:
    found = shutil.which("aaa-vpn")
    return str(Path(found).resolve()) if found else units.DEFAULT_EXECUTABLE


@click.command(
    "install-units",
    epilog=example(
        "aaa-vpn install-units",
        "aaa-vpn install-units --directory /tmp/units --sysusers-directory /tmp/units --dry-run",
    ),
)
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/systemd/system"),
    show_default=True,
    help="Where the unit files go.",
)
@click.option(
    "--sysusers-directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/sysusers.d"),
    show_default=True,
    help="Where aaa-vpn.conf (the dedicated user, for systemd-sysusers) goes.",
)
@click.option(
    "--executable",
    default=None,
    help="The aaa-vpn program the units run (absolute path).",
    show_default="aaa-vpn on PATH, else /usr/bin/aaa-vpn",
)
@click.option("--user", default=units.DEFAULT_USER, show_default=True, help="The user the daemons run as.")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
@pass_app
def install_units(
    app: App, /, directory: Path, sysusers_directory: Path, executable: str | None, user: str, dry_run: bool
) -> None:
    """Write systemd units for serve home, serve foreign and agent fa|ha|gw (docs/operations.md)."""
    program = executable or _default_executable()
    if not os.path.isabs(program):
        raise InvalidInput(f"--executable {program!r}: give an absolute path")
    if not user or not user.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"--user {user!r}: letters, digits, '-' and '_' only")
    written: list[str] = []
    for name, text in units.all_files(program, user).items():
        target = (sysusers_directory if name.endswith(".conf") else directory) / name
        written.append(str(target))
        if dry_run:
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o644)
        except OSError as exc:
            raise click.ClickException(f"cannot write {target}: {exc.strerror}") from None
    steps = [
        f"systemd-sysusers {sysusers_directory / 'aaa-vpn.conf'}",
        "systemctl daemon-reload",
        "systemctl enable --now aaa-vpn-home.service   # or aaa-vpn-foreign, aaa-vpn-fa@NAME ...",
    ]
    verb = "would write" if dry_run else "wrote"
    emit(
        app,
        {"files": written, "executable": program, "user": user, "dry_run": dry_run, "next": steps},
        "\n".join([*(f"{verb} {path}" for path in written), "then:", *(f"  {step}" for step in steps)]),
    )
