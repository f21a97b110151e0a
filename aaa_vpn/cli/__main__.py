"""``python -m aaa_vpn.cli``: the ``aaa-vpn`` command."""

from aaa_vpn.cli import main

main()
