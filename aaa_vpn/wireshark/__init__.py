"""Wireshark and tshark for aaa_vpn: the Lua dissector of the Mobile IP binding
messages (``aaa_vpn.lua``, next to this file) and the RADIUS vendor dictionary,
installed where tshark finds them (docs/wireshark.md).

* :func:`install`: for one user, into the folders tshark itself reports
  (``tshark -G folders``): the dissector into "Personal Lua Plugins", the
  dictionary as ``radius/dictionary.aaa_vpn`` in "Personal configuration",
  ``$INCLUDE``d from ``radius/dictionary`` (created, or kept and extended by
  one line). Run it with a temporary ``HOME`` (or ``WIRESHARK_CONFIG_DIR``
  for the dictionary) to install for one run only.
* :func:`tshark_options`: the options that load the dissector without
  installing it (``-X lua_script:...``) and give it the Mobile IP ports.
* ``python -m aaa_vpn.wireshark`` runs :func:`install` and prints what it wrote.

The dictionary is the vendor file plus ``dictionary.wireshark`` (corrections
to tshark's own 3GPP2 file), as :func:`aaa_vpn.wire.radius.prepare_tool_dir`
writes it for a per-run directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.mip import MIP_PORT

#: The dissector.
LUA_DISSECTOR = Path(__file__).resolve().with_name("aaa_vpn.lua")
#: Its preference that lists the Mobile IP UDP ports (default 434).
PORTS_PREFERENCE = "aaa_vpn.ports"
#: The dictionary file written next to the user's radius/dictionary.
DICTIONARY_NAME = "dictionary.aaa_vpn"
INCLUDE_LINE = f"$INCLUDE {DICTIONARY_NAME}"


class WiresharkError(RuntimeError):
    """tshark is missing or does not say where its folders are."""


@dataclass(frozen=True)
class Installed:
    """What :func:`install` wrote."""

    dissector: Path
    dictionary: Path
    root_dictionary: Path


def dictionary_text() -> bytes:
    """The RADIUS dictionary tshark gets: vendor attributes and corrections."""
    source = rc.dictionary_dir()
    return (source / rc.VENDOR_DICTIONARY).read_bytes() + b"\n" + (source / rc.WIRESHARK_FIXES).read_bytes()


def folders(tshark: str = "tshark", env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """``tshark -G folders`` under ``env``: folder name -> path."""
    try:
        result = subprocess.run(
            [tshark, "-G", "folders"], capture_output=True, text=True, env=env, timeout=60, check=False
        )
    except FileNotFoundError:
        raise WiresharkError(f"{tshark} is not installed (Debian: apt-get install tshark)") from None
    found = {}
    for line in result.stdout.splitlines():
        name, sep, path = line.partition(":")
        if sep and path.strip():
            found[name.strip()] = Path(path.strip())
    if "Personal Lua Plugins" not in found or "Personal configuration" not in found:
        raise WiresharkError(f"`{tshark} -G folders` named no personal folders: {result.stdout[-500:]!r}")
    return found


def install(tshark: str = "tshark", env: Mapping[str, str] | None = None) -> Installed:
    """Install the dissector and the dictionary where ``tshark`` (run with
    ``env``) looks for a user's own (module doc)."""
    where = folders(tshark, env)
    plugins = where["Personal Lua Plugins"]
    config = where["Personal configuration"] / "radius"
    plugins.mkdir(parents=True, exist_ok=True)
    config.mkdir(parents=True, exist_ok=True)
    dissector = plugins / LUA_DISSECTOR.name
    shutil.copyfile(LUA_DISSECTOR, dissector)
    dictionary = config / DICTIONARY_NAME
    dictionary.write_bytes(dictionary_text())
    root = config / "dictionary"
    existing = root.read_text() if root.exists() else ""
    if INCLUDE_LINE not in existing.splitlines():
        prefix = existing if not existing or existing.endswith("\n") else existing + "\n"
        root.write_text(prefix + INCLUDE_LINE + "\n")
    return Installed(dissector, dictionary, root)


def tshark_options(ports: Iterable[int] = (MIP_PORT,), *, load: bool = True) -> list[str]:
    """tshark options for the dissector: load it (``load``; not needed once
    installed) and decode ``ports`` as Mobile IP."""
    options = ["-X", f"lua_script:{LUA_DISSECTOR}"] if load else []
    return [*options, "-o", f"{PORTS_PREFERENCE}:{','.join(str(p) for p in ports)}"]


def per_run_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which tshark's personal folders are under ``home``
    (for :func:`install` into a throw-away directory)."""
    env = dict(os.environ if base is None else base)
    env["HOME"] = str(home)
    for variable in ("WIRESHARK_CONFIG_DIR", "XDG_CONFIG_HOME"):
        env.pop(variable, None)
    return env


__all__ = [
    "DICTIONARY_NAME",
    "LUA_DISSECTOR",
    "PORTS_PREFERENCE",
    "Installed",
    "WiresharkError",
    "dictionary_text",
    "folders",
    "install",
    "per_run_env",
    "tshark_options",
]
