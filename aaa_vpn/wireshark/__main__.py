"""``python -m aaa_vpn.wireshark``: install the dissector and the RADIUS dictionary for this user."""

import argparse
import sys

from aaa_vpn.wireshark import WiresharkError, install

parser = argparse.ArgumentParser(
    prog="python -m aaa_vpn.wireshark",
    description="Install aaa_vpn's Lua dissector (Mobile IP binding messages) and RADIUS vendor dictionary "
    "where tshark and Wireshark look for this user's own (tshark -G folders). Decode a Mobile IP port other "
    "than 434 with: tshark -o aaa_vpn.ports:434,40000 ... (docs/wireshark.md).",
)
parser.add_argument("--tshark", default="tshark", help="the tshark to ask for its folders (default: tshark)")
args = parser.parse_args()
try:
    installed = install(args.tshark)
except (WiresharkError, OSError) as exc:
    sys.exit(f"aaa_vpn.wireshark: {exc}")
print(f"dissector:  {installed.dissector}")
print(f"dictionary: {installed.dictionary} (included from {installed.root_dictionary})")
