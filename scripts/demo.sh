#!/usr/bin/env bash
# Show aaa_vpn working. Runs setup.sh, then `aaa-vpn demo "$@"`: the home AAA on a temporary
# SQLite database with a sample user, a foreign AAA, a home agent, three foreign agents, a
# static and a dynamic gateway -- each a separate process on its own loopback address -- and
# a mobile node walked through registration (flows A and B), a handoff inside the visited
# domain (flow C), to another domain and back (flow D) and deregistration, with a timeline
# and every node's SAs after each step.
# Everything stays on loopback and is removed at the end (also on Ctrl-C).
#
#   bash scripts/demo.sh            readable output
#   bash scripts/demo.sh --json     the same as one JSON document
#   bash scripts/demo.sh --keep     keep the temporary directory (database, logs, state files)
#
# Exit status: 0 when every step succeeded (docs/agents.md).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${AAA_VPN_VENV:-.venv}

bash scripts/setup.sh >&2
exec "$VENV/bin/aaa-vpn" demo "$@"
