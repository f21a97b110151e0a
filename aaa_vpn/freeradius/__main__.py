"""``python -m aaa_vpn.freeradius``: print the FreeRADIUS configuration (aaa_vpn.freeradius.config)."""

import sys

from aaa_vpn.freeradius.config import main

sys.exit(main())
