"""Test hosts on this machine: network namespaces on a bridge, each with its own veth,
addresses and sshd (`xdpcap lab`), the traffic between them, and the Vagrant lab's inventory.
"""
