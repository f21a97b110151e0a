"""The words and defaults of a RADIUS client's server pool (FreeRADIUS's
``home_server_pool``), kept apart from the client so that the command line
can check settings without loading the codecs (docs/radius-client.md)."""

#: FreeRADIUS's pool types (:mod:`aaa_vpn.roles.radius_client` rule 4a).
POOL_TYPES = ("fail-over", "load-balance", "client-balance", "keyed-balance")
#: Seconds a server that timed out gets no requests unless it answers a probe.
DEFAULT_DEAD_TIME = 30.0
#: Seconds a server that let a request time out stays a zombie (probed, no new
#: requests while another server is live) before it is marked dead (rule 4).
DEFAULT_ZOMBIE_PERIOD = 40.0

__all__ = ["DEFAULT_DEAD_TIME", "DEFAULT_ZOMBIE_PERIOD", "POOL_TYPES"]
