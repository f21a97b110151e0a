#!/usr/bin/env bash
# Run the whole check: setup, pytest (arguments are passed through), ruff (lint and
# format), mypy.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -k profile -x   pytest arguments pass through
#
# Exit status: pytest's (exit code 5, "no tests collected", counts as a failure); if pytest
# passed, ruff's, then mypy --strict's.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${AAA_VPN_VENV:-.venv}
say() { printf '[test] %s\n' "$*"; }

bash scripts/setup.sh || { say "setup failed"; exit 1; }

# Tests that need external tools (radclient, tshark, strongSwan, root for netns) must not
# silently skip in CI: conftest turns such skips into failures when this is 1.
export AAA_VPN_REQUIRE_TOOLS=${AAA_VPN_REQUIRE_TOOLS:-1}

say "pytest $*"
"$VENV/bin/python" -m pytest "$@"
pytest_rc=$?
if ((pytest_rc == 5)); then
    say "pytest collected no tests: counted as a failure"
fi

lint_paths=()
for p in aaa_vpn tests bench; do [[ -d $p ]] && lint_paths+=("$p"); done
say "ruff check ${lint_paths[*]}"
"$VENV/bin/ruff" check "${lint_paths[@]}"
ruff_rc=$?
say "ruff format --check ${lint_paths[*]}"
"$VENV/bin/ruff" format --check "${lint_paths[@]}" || ruff_rc=1

say "mypy --strict aaa_vpn"
"$VENV/bin/mypy" --strict aaa_vpn
mypy_rc=$?

say "summary: pytest=$pytest_rc ruff=$ruff_rc mypy=$mypy_rc"
if ((pytest_rc != 0)); then
    exit "$pytest_rc"
fi
if ((ruff_rc != 0)); then
    exit "$ruff_rc"
fi
exit "$mypy_rc"
