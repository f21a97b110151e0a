"""aaa_vpn: a mobile user's VPN that follows them across networks.

A home AAA server (RADIUS, on pyrad) keeps each user's VPN record and hands the
foreign agent, home agent and correspondent gateway their part of the VPN path
and IPsec security profile when the mobile node registers through Mobile IPv4.
"""

__version__ = "0.1.0"
