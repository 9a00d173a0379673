"""Where the sampler's programs attach: one small class per capture point.

Each hook attaches one loaded program to one interface and detaches it again, and
never touches a program it did not attach. Every attachment is a BPF link that the
kernel drops when our process dies (kill -9 included), or, on kernels without such
links, a legacy attachment the next run finds by name and removes.
"""

from __future__ import annotations

from typing import Protocol


class Hook(Protocol):
    direction: int  # contract.INBOUND or contract.OUTBOUND
    program: str  # the name of the program it attaches (contract.*PROGRAM_NAME)

    def attach(self, prog_fd: int) -> None: ...

    def detach(self) -> None: ...

    def describe(self) -> str:
        """For the interface description: "XDP ingress native (bpf_link)"."""
        ...
