"""SA backends (docs/design.md section 5) behind one small interface.

* :mod:`aaa_vpn.sa.base`: the :class:`SaBackend` protocol, :class:`InstalledPath`
  and the errors every backend raises.
* :mod:`aaa_vpn.sa.esp`: ESP (RFC 4303) tunnel mode on ``cryptography``: the
  packet codec of the backends that move packets themselves.
* :mod:`aaa_vpn.sa.memory`: the in-process backend that really encrypts, for
  tests of the agents and for demos.

See ``docs/sa-backends.md``.
"""

from aaa_vpn.sa.base import InstalledPath, SaBackend, SaConflict, SaError, SaUnsupported, path_owner
from aaa_vpn.sa.esp import EspError, EspErrorReason, EspSa
from aaa_vpn.sa.memory import MemoryBackend

__all__ = [
    "EspError",
    "EspErrorReason",
    "EspSa",
    "InstalledPath",
    "MemoryBackend",
    "SaBackend",
    "SaConflict",
    "SaError",
    "SaUnsupported",
    "path_owner",
]
