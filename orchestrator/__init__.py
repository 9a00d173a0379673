"""Packet-capture controller: inventory, SSH fan-out, merge, lab."""
