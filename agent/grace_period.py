"""Wait until every BPF program run that started before now has ended.

XDP and tc programs run inside RCU read-side sections (softirq or bottom halves
disabled), so one RCU grace period is exactly that wait. membarrier(2)'s global
command is a synchronize_rcu() in the kernel (kernel/sched/membarrier.c), with no lock
held: a hundred agents ending together share grace periods instead of queueing.
(Detaching waits as well, but under the kernel's rtnl lock, one detach after another:
about 12 ms each, two seconds for the lab's hundred hosts.)
"""

from __future__ import annotations

import ctypes
import platform

_SYSCALL_MEMBARRIER = {"x86_64": 324, "aarch64": 283, "riscv64": 283}
MEMBARRIER_CMD_GLOBAL = 1  # MEMBARRIER_CMD_SHARED before Linux 4.16


def wait_for_running_programs() -> bool:
    """True once a grace period has passed; False where the kernel has no such barrier
    (nohz_full refuses it, old kernels lack it): the caller then detaches to be sure."""
    number = _SYSCALL_MEMBARRIER.get(platform.machine())
    if number is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    flags, cpu = ctypes.c_uint(0), ctypes.c_int(-1)
    return libc.syscall(number, ctypes.c_int(MEMBARRIER_CMD_GLOBAL), flags, cpu) == 0
