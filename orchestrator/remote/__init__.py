"""One host over SSH: the connection (host keys, sudo), the agent bundle and its launch,
the agent's events on the channel, the SFTP standby, the fetch and its checks.
"""
