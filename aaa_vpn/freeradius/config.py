"""FreeRADIUS configuration for the hosted home AAA (docs/freeradius-module.md):
the ``python3`` module instance and the policy that names the client.

``python -m aaa_vpn.freeradius --db PATH [--key-file PATH]`` prints both for
the interpreter it runs under (its site-packages and this package's
location), ready for ``mods-enabled/aaa_vpn`` and ``policy.d/aaa_vpn``.
The tests and bench/radius_throughput.py use the same text.
"""

from __future__ import annotations

import argparse
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from aaa_vpn.freeradius.bridge import CLIENT_ADDRESS

#: The directory that holds the ``aaa_vpn`` package (rlm_python3's ``python_path``).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]

#: The policy to call before the module: rlm_python3 does not pass
#: Packet-Src-IP-Address, so it goes to the control list (bridge rule 2).
CLIENT_POLICY = f"""\
aaa_vpn_client {{
    update control {{
        &{CLIENT_ADDRESS} := "%{{Packet-Src-IP-Address}}"
    }}
}}
"""


def module_config(
    db: str | Path,
    key_file: str | Path | None = None,
    *,
    name: str = "aaa_vpn",
    site_packages: Sequence[str | Path] | None = None,
    python_path: str | Path = PACKAGE_PARENT,
    session_lifetime: int | None = None,
    log_level: str = "info",
) -> str:
    """The ``python3 <name> { }`` module section. ``site_packages`` defaults
    to the running interpreter's (where pyrad and cryptography are)."""
    if site_packages is None:
        site_packages = [sysconfig.get_paths()["purelib"]]
    lines = [
        f'db = "{db}"',
        *([f'key_file = "{key_file}"'] if key_file is not None else []),
        f'site_packages = "{":".join(str(p) for p in site_packages)}"',
        *([f"session_lifetime = {session_lifetime}"] if session_lifetime is not None else []),
        f'log_level = "{log_level}"',
    ]
    settings = "".join(f"        {line}\n" for line in lines)
    return f"""\
python3 {name} {{
    python_path = "{python_path}"
    module = aaa_vpn.freeradius.module
    pass_all_vps_dict = yes
    mod_instantiate = ${{.module}}
    func_instantiate = instantiate
    mod_detach = ${{.module}}
    func_detach = detach
    mod_authorize = ${{.module}}
    func_authorize = authorize
    mod_post_auth = ${{.module}}
    func_post_auth = post_auth
    config {{
{settings}    }}
}}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aaa_vpn.freeradius",
        description="Print the FreeRADIUS module section and client policy that host aaa_vpn's home AAA "
        "(docs/freeradius-module.md).",
    )
    parser.add_argument("--db", required=True, help="the database: a SQLite path or a postgresql:// URL")
    parser.add_argument("--key-file", help="the secrets key file (default: the database's)")
    parser.add_argument("--name", default="aaa_vpn", help="the module instance name (default aaa_vpn)")
    args = parser.parse_args(argv)
    print("# mods-enabled/aaa_vpn")
    print(module_config(args.db, args.key_file, name=args.name))
    print("# policy.d/aaa_vpn")
    print(CLIENT_POLICY)
    return 0


__all__ = ["CLIENT_POLICY", "PACKAGE_PARENT", "main", "module_config"]
