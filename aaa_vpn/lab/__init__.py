"""Whole topologies for the demo, the namespace lab and the benchmarks (docs/design.md section 6).

* :mod:`aaa_vpn.lab.topology`: the elements and their addresses, the sample
  user's VPN in the database, the command lines that start each element.
* :mod:`aaa_vpn.lab.processes`: starting, waiting for and stopping a
  topology's processes by PID.
* :mod:`aaa_vpn.lab.demo`: ``aaa-vpn demo``, the topology on loopback.
* :mod:`aaa_vpn.lab.netns`: ``aaa-vpn demo --netns``, the topology in network
  namespaces with real IPsec and traffic (end-to-end tests, benchmarks).
"""
