"""Builds the compiled hot path (aaa_vpn/wire/_fast.c); everything else is in setup.cfg.

The extension is optional: where it cannot be built, aaa_vpn runs its
pure-Python equivalents (aaa_vpn/wire/memo.py, radius_profile.py), only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "aaa_vpn.wire._fast",
            ["aaa_vpn/wire/_fast.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)
