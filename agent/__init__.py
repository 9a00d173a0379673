"""The xdpcap agent: runs on one host, samples packets with XDP and writes pcapng.

It imports nothing but the standard library and bcc, so that it runs from a zipapp
with the host's own python3.
"""

__version__ = "0.1.0"
