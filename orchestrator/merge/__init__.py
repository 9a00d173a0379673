"""From host captures to one file: the pcapng/pcap reader (controller only: the agent never
reads pcapng), the time-ordered merge with its optional C loop (`_fastmerge.c`), and the
live merge that streams frames from running agents (`-w -`, Wireshark's extcap).
"""
