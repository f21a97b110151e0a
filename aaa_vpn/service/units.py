"""systemd units for the daemons, written from one definition: the home
AAA, the foreign AAA, and one template per agent kind (docs/operations.md).

Rules:

1. Every unit is ``Type=notify``: the daemon sends ``READY=1`` once it
   serves and ``WATCHDOG=1`` while it is healthy (net/systemd_notify.py);
   ``WatchdogSec=`` restarts one whose loop stops.
2. The configuration is checked before every start (``ExecStartPre=... --check``)
   and, for the home AAA, before every reload (``ExecReload=`` runs the check
   first, then sends SIGHUP, which reloads without dropping requests). The
   foreign AAA and the agents do not reload: ``systemctl restart`` them.
3. Hardening: a dedicated user (``aaa-vpn``, made by the ``sysusers.d`` file
   written beside the units), no new privileges, the whole file system
   read-only (``ProtectSystem=strict``) except the state directory
   ``/var/lib/aaa-vpn`` (database, journals) and the runtime directory
   ``/run/aaa-vpn`` (state files), no home directories, private /tmp. The
   servers get no capability at all; the agents keep only
   ``CAP_NET_BIND_SERVICE`` (Mobile IP port 434) and ``CAP_NET_ADMIN`` (XFRM,
   TUN, routes), and may open netlink and the TUN device.
4. Paths: the units run ``<executable>`` (default ``/usr/bin/aaa-vpn``), read
   ``/etc/aaa-vpn/aaa-vpn.toml`` (home: database, key file and ``[serve.home]``),
   ``/etc/aaa-vpn/foreign.toml`` and ``/etc/aaa-vpn/<instance>.toml`` (an
   agent ``aaa-vpn-fa@fa1`` reads ``fa1.toml``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_EXECUTABLE = "/usr/bin/aaa-vpn"
DEFAULT_USER = "aaa-vpn"
CONFIG_DIRECTORY = "/etc/aaa-vpn"
STATE_DIRECTORY = "/var/lib/aaa-vpn"
RUNTIME_DIRECTORY = "/run/aaa-vpn"
WATCHDOG_SECONDS = 30


@dataclass(frozen=True)
class Unit:
    """One unit file: its name and what differs between the daemons."""

    name: str
    description: str
    command: str
    """The ``aaa-vpn`` arguments that run it (``--check`` is appended for the check)."""
    reload: bool = False
    agent: bool = False


UNITS: tuple[Unit, ...] = (
    Unit(
        "aaa-vpn-home.service",
        "aaa_vpn home AAA (RADIUS authentication and accounting)",
        f"--config {CONFIG_DIRECTORY}/aaa-vpn.toml serve home",
        reload=True,
    ),
    Unit(
        "aaa-vpn-foreign.service",
        "aaa_vpn foreign AAA (RADIUS proxy by realm)",
        f"serve foreign --config {CONFIG_DIRECTORY}/foreign.toml",
    ),
    Unit(
        "aaa-vpn-fa@.service",
        "aaa_vpn foreign agent %i",
        f"agent fa --config {CONFIG_DIRECTORY}/%i.toml",
        agent=True,
    ),
    Unit(
        "aaa-vpn-ha@.service",
        "aaa_vpn home agent %i",
        f"agent ha --config {CONFIG_DIRECTORY}/%i.toml",
        agent=True,
    ),
    Unit(
        "aaa-vpn-gw@.service",
        "aaa_vpn correspondent gateway %i",
        f"agent gw --config {CONFIG_DIRECTORY}/%i.toml",
        agent=True,
    ),
)

_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0027"""

_SERVER = """\
CapabilityBoundingSet=
AmbientCapabilities=
PrivateDevices=yes
ProtectKernelTunables=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"""

# The agents install SAs and routes (netlink), may drive a TUN device
# (userspace backend) and charon over VICI (strongswan backend), and bind
# the Mobile IP port 434.
_AGENT = """\
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN
AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
ReadWritePaths=-/run/charon.vici"""


def render(unit: Unit, executable: str = DEFAULT_EXECUTABLE, user: str = DEFAULT_USER) -> str:
    """The text of ``unit`` (module rules)."""
    run = f"{executable} {unit.command}"
    reload = f"ExecReload={run} --check\nExecReload=/bin/kill -HUP $MAINPID\n" if unit.reload else ""
    return f"""\
# Written by `aaa-vpn install-units` (aaa_vpn/service/units.py); docs/operations.md.
[Unit]
Description={unit.description}
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
User={user}
Group={user}
ExecStartPre={run} --check
ExecStart={run}
{reload}WatchdogSec={WATCHDOG_SECONDS}
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
KillMode=mixed
LimitNOFILE=65536
ConfigurationDirectory=aaa-vpn
StateDirectory=aaa-vpn
StateDirectoryMode=0750
RuntimeDirectory=aaa-vpn
RuntimeDirectoryPreserve=restart
ReadWritePaths=-{STATE_DIRECTORY} -{RUNTIME_DIRECTORY}
{_HARDENING}
{_AGENT if unit.agent else _SERVER}

[Install]
WantedBy=multi-user.target
"""


def sysusers(user: str = DEFAULT_USER) -> str:
    """The ``sysusers.d`` line that makes the dedicated user (systemd-sysusers)."""
    return f'# Written by `aaa-vpn install-units`.\nu {user} - "aaa_vpn daemons" {STATE_DIRECTORY} -\n'


def all_files(executable: str = DEFAULT_EXECUTABLE, user: str = DEFAULT_USER) -> dict[str, str]:
    """Every unit by file name, and the sysusers file as ``aaa-vpn.conf``."""
    files = {unit.name: render(unit, executable, user) for unit in UNITS}
    files["aaa-vpn.conf"] = sysusers(user)
    return files


__all__ = ["DEFAULT_EXECUTABLE", "DEFAULT_USER", "UNITS", "Unit", "all_files", "render", "sysusers"]
