#!/usr/bin/env bash
# Show aaa_vpn working. Runs setup.sh, then `aaa-vpn demo "$@"` when the CLI has it;
# until the Mobile IP agents exist: a temporary database with one sample user
# (scripts/sample-records.sh), the home AAA on 127.0.0.1:18120, one FA-Registration
# Access-Request from radclient and the Access-Accept with the FA's VPN profile
# printed. On a terminal the home AAA then keeps serving until Ctrl-C (try the
# printed radclient command); otherwise, or with --once, it is stopped at once.
# Everything stays on loopback.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${AAA_VPN_VENV:-.venv}
PORT=${AAA_VPN_DEMO_PORT:-18120}
say() { printf '[demo] %s\n' "$*"; }

bash scripts/setup.sh
AAA=$VENV/bin/aaa-vpn

if "$AAA" demo --help >/dev/null 2>&1; then
    exec "$AAA" demo "$@"
fi

T=$(mktemp -d -t aaa_vpn-demo.XXXXXX)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        say "stopping the home AAA (pid $SERVER_PID)"
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

A=("$AAA" --db "$T/aaa.db" --key-file "$T/server.key")
say "database in $T"
"${A[@]}" db init
# shellcheck source=scripts/sample-records.sh
source scripts/sample-records.sh
say "provisioning the sample user mn1@home.example (two correspondents, static + dynamic gateway)"
sample_records "${A[@]}"

say "starting: aaa-vpn serve home --listen 127.0.0.1 --port $PORT --workers 1"
"${A[@]}" serve home --listen 127.0.0.1 --port "$PORT" --workers 1 >"$T/server.log" 2>&1 &
SERVER_PID=$!

DICT=aaa_vpn/dictionaries/freeradius
"$VENV/bin/python" bench/radius_throughput.py --print-request >"$T/request.txt"
say "Access-Request (FA-Registration, MN-AAA proof as CHAP):"
sed 's/^/    /' "$T/request.txt"

for _ in $(seq 50); do
    if radclient -r 1 -t 0.2 -d "$DICT" -f "$T/request.txt" "127.0.0.1:$PORT" auth testing123 \
        >/dev/null 2>&1; then
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$T/server.log"; say "the server exited"; exit 1; }
    sleep 0.2
done
say "reply (radclient -x verifies the Response Authenticator and Message-Authenticator):"
radclient -x -r 1 -t 2 -d "$DICT" -f "$T/request.txt" "127.0.0.1:$PORT" auth testing123
say "server log:"
sed 's/^/    /' "$T/server.log"

if [[ ${1:-} != --once && -t 0 ]]; then
    say "the home AAA keeps serving on 127.0.0.1:$PORT (database $T/aaa.db); try:"
    say "    radclient -x -d $DICT -f $T/request.txt 127.0.0.1:$PORT auth testing123"
    say "    $AAA --db $T/aaa.db --key-file $T/server.key session list"
    say "press Ctrl-C to stop"
    wait "$SERVER_PID" || true
fi
