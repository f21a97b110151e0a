#!/usr/bin/env bash
# Prepare a machine to build, test and demo aaa_vpn.
#
#   1. system packages (Debian 12): RADIUS client tools, radsecproxy (a RadSec peer of the
#      tests, run from their own configuration; the system service is left disabled), the FreeRADIUS server (the tests
#      run their own instances from temporary configurations; the system daemon is neither
#      left running nor enabled at boot when this script installs it) and its Python 3
#      module (rlm_python3, which hosts aaa_vpn's decisions: docs/freeradius-module.md) and
#      rlm_sql_postgresql (bench/carrier.py's anchor), tshark, tcpdump, iproute2, ping,
#      nftables (random loss on the namespace lab's links), strongSwan with kernel-libipsec
#      (see docs / test-environment notes),
#      PostgreSQL (initdb and pg_ctl for the tests' own clusters; no system cluster is
#      started by this script's install), headless Chromium and its WebDriver (the user-page
#      browser test drives Debian's chromium through chromium-driver), systemd (for
#      `systemd-analyze verify` on the service units; nothing is started with it).
#      Only what is missing is installed; `apt-get update` only runs when something is missing.
#   2. a virtualenv in .venv (python3 >= 3.11) with `pip install -e '.[test]'`, which
#      also compiles aaa_vpn/wire/_fast.c (gcc and the Python headers); skipped when
#      setup.cfg, pyproject.toml, setup.py and the C source have not changed since
#      the last run and the compiled module is there.
#
# Idempotent and quick when everything is already there. Environment:
#   PYTHON=python3            interpreter used to create the virtualenv
#   AAA_VPN_VENV=.venv        where the virtualenv lives
#   AAA_VPN_SKIP_APT=1        do not touch system packages (e.g. a developer laptop)
#   AAA_VPN_FORCE_PIP=1       reinstall the Python packages even if nothing changed
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=${AAA_VPN_VENV:-$ROOT/.venv}

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- system packages
# "check:package": check is a command name, a path (starting with /) that the
# package installs, or "-" (ask dpkg whether the package is installed). The strongSwan set is needed by the strongswan backend tests.
REQUIRED=(
    "radclient:freeradius-utils"
    "/usr/sbin/freeradius:freeradius"
    "/usr/lib/freeradius/rlm_python3.so:freeradius-python3"
    "/usr/sbin/radsecproxy:radsecproxy"
    "tshark:tshark"
    "tcpdump:tcpdump"
    "ip:iproute2"
    "ping:iputils-ping"
    "/usr/sbin/nft:nftables"
    "swanctl:strongswan-swanctl"
    "charon-systemd:charon-systemd"
    "-:strongswan-charon"
    "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so:libcharon-extra-plugins"
    "/usr/lib/ipsec/plugins/libstrongswan-gcm.so:libstrongswan-standard-plugins"
    "-:libstrongswan-extra-plugins"
    "gcc:gcc"
    "-:postgresql"
    "/usr/lib/freeradius/rlm_sql_postgresql.so:freeradius-postgresql"
    "chromium:chromium"
    "chromedriver:chromium-driver"
    "systemd-analyze:systemd"
    "freeDiameterd:freediameterd"
    "/usr/lib/freeDiameter/rt_default.fdx:freediameter-extensions"
    "openssl:openssl"
)

# Debian's freeradius postinst starts the system daemon (invoke-rc.d, or deb-systemd-invoke
# under systemd) on *:1812/1813, and freeradius-python3's force-reloads it; postgresql's
# starts a system cluster on 5432, which the tests do not use (they make throw-away
# clusters of their own, tests/postgres.py). Both helpers ask /usr/sbin/policy-rc.d first and start
# nothing when it answers 101 ("action forbidden"), so setup.sh puts one there for the
# install unless the machine has its own (Docker images do), removes it afterwards, then
# disables the service for the next boot, stops it in case it ran and checks.
POLICY_RC=/usr/sbin/policy-rc.d
own_policy=0
drop_policy() {
    if ((own_policy)); then
        "${SUDO[@]}" rm -f "$POLICY_RC"
        own_policy=0
    fi
}

quiet_freeradius() {
    if [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl disable --now freeradius.service >>"$aptlog" 2>&1 || true
    else
        "${SUDO[@]}" update-rc.d freeradius disable >>"$aptlog" 2>&1 || true
        if [[ -x /etc/init.d/freeradius ]]; then
            "${SUDO[@]}" /etc/init.d/freeradius stop >>"$aptlog" 2>&1 || true
        fi
    fi
    local pidfile=/run/freeradius/freeradius.pid pid listening
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == freeradius ]]; then
        die "the system freeradius daemon is running (pid $pid, $pidfile); stop it"
    fi
    listening=$("${SUDO[@]}" ss -Hulpn 2>/dev/null | grep -E '"freeradius"' | grep -E ':181[23] ' || true)
    [[ -z $listening ]] || die "a freeradius daemon listens on 1812/1813 after the install: $listening"
    say "freeradius installed; no daemon running, not enabled at boot"
}

have() {
    local check=$1
    case $check in
        -) return 1 ;;
        /*) [[ -e $check ]] ;;
        *) command -v "$check" >/dev/null 2>&1 ;;
    esac
}

missing=()
for entry in "${REQUIRED[@]}"; do
    check=${entry%%:*}
    pkg=${entry#*:}
    if have "$check"; then
        continue
    fi
    # A package can be installed without the file we look for (e.g. a plugin moved):
    # trust dpkg in that case rather than reinstalling on every run.
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        continue
    fi
    [[ " ${missing[*]:-} " == *" $pkg "* ]] || missing+=("$pkg")
done

# The compiled hot path (aaa_vpn/wire/_fast.c) needs the interpreter's headers
# (Debian: python3-dev for the system Python; other builds ship them).
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    missing+=("python3-dev")
fi

# python3 -m venv needs ensurepip (Debian: python3-venv / python3.X-venv).
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 && [[ ! -x $VENV/bin/python ]]; then
    missing+=("python3-venv")
fi

if ((${#missing[@]} == 0)); then
    say "system packages: all present"
elif [[ ${AAA_VPN_SKIP_APT:-0} == 1 ]]; then
    say "system packages missing but AAA_VPN_SKIP_APT=1: ${missing[*]}"
else
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get; install them by hand"
    SUDO=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}; run as root or install sudo"
        SUDO=(sudo)
    fi
    say "installing system packages: ${missing[*]}"
    # tshark asks whether non-root users may capture: answer "no" up front.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' \
        | "${SUDO[@]}" debconf-set-selections 2>/dev/null || true
    # apt/dpkg chatter goes to a log that is shown only when something fails.
    # (Postinst of the strongSwan packages prints "Failed to send reload request" when
    # there is no systemd; that is harmless. No daemon is started.)
    aptlog=$(mktemp -t aaa_vpn-apt.XXXXXX.log)
    if [[ " ${missing[*]} " =~ \ (freeradius|freeradius-python3|postgresql|freeradius-postgresql|radsecproxy)\  ]] \
        && [[ ! -e $POLICY_RC ]]; then
        trap drop_policy EXIT
        own_policy=1
        printf '#!/bin/sh\n# scripts/setup.sh (aaa_vpn): no daemon starts during its install\nexit 101\n' \
            | "${SUDO[@]}" tee "$POLICY_RC" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY_RC"
    fi
    run_apt() {
        if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "$@" >>"$aptlog" 2>&1; then
            tail -n 40 "$aptlog" >&2
            die "'$*' failed (full log: $aptlog)"
        fi
    }
    say "apt-get update"
    run_apt apt-get update
    say "apt-get install --no-install-recommends ${missing[*]}"
    run_apt apt-get install -y --no-install-recommends "${missing[@]}"
    drop_policy
    if [[ " ${missing[*]} " =~ \ (freeradius|freeradius-python3)\  ]]; then
        quiet_freeradius
    fi
    if [[ " ${missing[*]} " == *" radsecproxy "* ]]; then
        # The RadSec tests run their own radsecproxy (-f, own config); the system one stays off.
        if [[ -d /run/systemd/system ]]; then
            "${SUDO[@]}" systemctl disable --now radsecproxy.service >>"$aptlog" 2>&1 || true
        else
            "${SUDO[@]}" update-rc.d radsecproxy disable >>"$aptlog" 2>&1 || true
        fi
    fi
    rm -f "$aptlog"
    say "system packages installed"
fi

# ---------------------------------------------------------------- virtualenv
"$PYTHON" - <<'EOF' || die "$PYTHON is older than 3.11"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
EOF

if [[ ! -x $VENV/bin/python ]]; then
    say "creating virtualenv $VENV with $("$PYTHON" --version 2>&1)"
    if ! "$PYTHON" -m venv "$VENV"; then
        # Debian splits ensurepip out of the interpreter: python3-venv / python3.X-venv.
        [[ ${AAA_VPN_SKIP_APT:-0} != 1 ]] && command -v apt-get >/dev/null 2>&1 \
            || die "'$PYTHON -m venv' failed; install python3-venv"
        rm -rf "$VENV"
        pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        say "python3 -m venv failed: installing python3-venv python$pyver-venv"
        SUDO=()
        [[ $(id -u) == 0 ]] || SUDO=(sudo)
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-venv "python$pyver-venv" >/dev/null \
            || die "could not install python3-venv"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

STAMP=$VENV/.aaa_vpn-installed
want=$(cat setup.cfg pyproject.toml setup.py aaa_vpn/wire/_fast.c 2>/dev/null | sha256sum | cut -d' ' -f1)
have_stamp=$(cat "$STAMP" 2>/dev/null || true)
if [[ ${AAA_VPN_FORCE_PIP:-0} != 1 && $want == "$have_stamp" ]] \
    && "$VENV/bin/python" -c 'import aaa_vpn.wire._fast' >/dev/null 2>&1; then
    say "python packages: up to date ($VENV)"
else
    say "pip install -e '.[test]' into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" >"$STAMP"
    say "python packages installed"
fi

# First lines only, read after the tools exit: `tool -v | head -n1` under pipefail
# reports the tool's SIGPIPE as a failure once head has closed the pipe.
first_line() { local out; out=$("$@" 2>/dev/null) || true; printf '%s' "${out%%$'\n'*}"; }
radclient_version=$(first_line radclient -v)
freeradius_version=$(first_line /usr/sbin/freeradius -v)
say "ready: $("$VENV/bin/python" --version), ${radclient_version:-radclient ?}"
say "       ${freeradius_version:-freeradius ?}"
