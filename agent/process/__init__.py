"""Process attribution: which process (and container) sent or received each packet.

- hooks.py      attach the programs that fill the sampler's `procs` table (cgroup socket
                hooks, sock_ops, the accept kretprobe, the exec raw tracepoint)
- existing.py   sockets older than the capture, from sock_diag and /proc
- btf.py        the kernel-object offsets the programs need, from the kernel's BTF
- selection.py  --pid, --comm, --container
- procinfo.py   /proc reads; comments.py the EPB comments (ptcpdump's format)
- attribution.py  the one object the capture uses
"""
