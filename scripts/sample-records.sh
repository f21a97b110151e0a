# shellcheck shell=bash
# A sample VPN database for demos: source this file, then
#     sample_records .venv/bin/aaa-vpn --db "$T/aaa.db" --key-file "$T/server.key"
# (the arguments are the aaa-vpn command with its global options).
#
# One mobile user mn1@home.example (MN-AAA secret "mn-aaa-bench-secret", the same as
# bench/radius_throughput.py uses) with two correspondents: one behind a static gateway
# (stationary tunnel to the HA) and one behind a dynamic gateway (route optimisation),
# so an FA's Access-Accept carries two paths: FA-HA and FA-GW.
# All node addresses are on loopback.

sample_records() {
    local -a aaa=("$@")
    "${aaa[@]}" client add demo-fa --address 127.0.0.1 --role fa --secret testing123
    "${aaa[@]}" client add demo-ha --address 127.0.0.2 --role ha --secret testing123
    "${aaa[@]}" user add mn1@home.example --home-agent 127.0.0.2 --home-address 198.51.100.10 \
        --mn-aaa-secret mn-aaa-bench-secret --mn-ha-spi 256 --mn-ha-key-hex 00112233445566778899aabbccddeeff
    "${aaa[@]}" gateway add gw-static --address 127.0.0.3 --mode static --protects 203.0.113.0/25 \
        --generate-gateway-key
    "${aaa[@]}" gateway add gw-dynamic --address 127.0.0.4 --mode dynamic --protects 203.0.113.128/25 \
        --generate-gateway-key
    "${aaa[@]}" service add gold --key-mode manual --esp-transform aes256gcm16
    "${aaa[@]}" qos add video --dscp 34 --rate-kbps 10000
    "${aaa[@]}" vpn add --user mn1@home.example --correspondent 203.0.113.0/25 --gateway gw-static \
        --service gold --qos video
    "${aaa[@]}" vpn add --user mn1@home.example --correspondent 203.0.113.128/25 --gateway gw-dynamic \
        --service gold --qos video
}
