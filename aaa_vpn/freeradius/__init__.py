"""aaa_vpn's home AAA hosted by FreeRADIUS 3.2 through ``rlm_python3``.

FreeRADIUS keeps doing RADIUS (clients, shared secrets, Message-Authenticator,
duplicate detection, proxying, encoding and salt encryption of the reply);
aaa_vpn's home AAA role decides (MN-AAA proof, create/renew/re-key/move, the
session in the database, the view and its profile attributes).

* :mod:`aaa_vpn.freeradius.pairs`: FreeRADIUS value pairs, in the text forms
  rlm_python3 gives and takes, to and from RADIUS attributes.
* :mod:`aaa_vpn.freeradius.bridge`: the hosted home AAA: a request's pairs in,
  FreeRADIUS's answer (return code, reply and control pairs) out.
* :mod:`aaa_vpn.freeradius.module`: the functions rlm_python3 calls
  (``module = aaa_vpn.freeradius.module``).
* :mod:`aaa_vpn.freeradius.config`: the FreeRADIUS configuration text
  (``python -m aaa_vpn.freeradius --db PATH`` prints it).

The configuration is in docs/freeradius-module.md. This package's
``__init__`` imports nothing, so that :mod:`~aaa_vpn.freeradius.module` can order
``sys.path`` before anything else is loaded.
"""
