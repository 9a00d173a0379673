#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdpcap developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: agent
short_description: Run the xdpcap agent on a host for one capture window
version_added: 0.1.0
description:
  - Runs the xdpcap agent zipapp (uploaded by the play) with the host's Python and bcc. It
    compiles and attaches its BPF programs, waits until O(start_at_ns), captures for
    O(duration) seconds into O(output), detaches everything and reports its summary.
  - Every host of a play gets the same O(start_at_ns), so Ansible's forks and batches do not
    skew the capture windows. An agent that is ready only after that time captures anyway
    and the module warns how late its window opened.
  - The arguments reach the agent as a list, never through a shell.
options:
  agent:
    description: Path of the agent zipapp on the host.
    type: path
    required: true
  iface:
    description: Interface to capture on.
    type: str
    required: true
  output:
    description: The pcapng file the agent writes on the host.
    type: path
    required: true
  start_at_ns:
    description:
      - Wall-clock time (ns since the epoch) at which the capture window opens. At most
        2 s in the past and 600 s ahead of the host's clock.
    type: int
    required: true
  duration:
    description: Seconds to capture.
    type: float
    required: true
  count:
    description: Stop after this many packets are written.
    type: int
  direction:
    description: What to capture, as tcpdump's C(-Q).
    type: str
    choices: [in, out, inout]
    default: inout
  xdp_hook:
    description:
      - The pinned xdpcap hook map of the interface's XDP program (C(--xdp-hook)); without
        it the agent finds a pinned one, else captures inbound after that program.
    type: str
  process:
    description:
      - Process attribution (EPB comments naming each packet's process and container):
        C(true) is the agent's C(--process), C(false) its C(--no-process); unset, it is
        off unless O(pid), O(comm) or O(container) select by process.
    type: bool
  pid:
    description: Keep only this process's packets (its PID on the host).
    type: int
  comm:
    description: Keep only packets of processes of this name.
    type: str
  container:
    description: Keep only packets of this container (id, name, systemd unit or cgroup path).
    type: str
  filter_args:
    description:
      - The checked filter arguments from M(xdpcap.capture.plan) (cBPF programs, then the
        expression).
    type: list
    elements: str
    default: []
  python:
    description: Python that runs the agent (it needs bcc). Default the one running this module.
    type: path
requirements:
  - python3 and bcc (Debian C(python3-bpfcc)) on the host; root (C(become)) to attach BPF.
author:
  - xdpcap developers (@xdpcap)
"""

EXAMPLES = r"""
- name: Capture 8 s on eth0, from the planned start time
  xdpcap.capture.agent:
    agent: /tmp/xdpcap-x/xdpcap-agent.pyz
    iface: eth0
    output: /tmp/xdpcap-x/capture.pcapng
    start_at_ns: 1796380000000000000
    duration: 8
  async: 120
  poll: 0
  register: xdpcap_job
"""

RETURN = r"""
summary:
  description:
    - The agent's final summary (seen, filtered_out, written, lost, not_sampled, past_count,
      window_start_ns, file_sha256, file_size, directions...).
    - seen = filtered_out + written + lost + not_sampled + past_count.
  returned: success
  type: dict
file:
  description: The capture file on the host.
  returned: success
  type: str
start_late_ms:
  description: How long after O(start_at_ns) the window opened, in ms.
  returned: success
  type: float
"""

import json
import re
import sys

from ansible.module_utils.basic import AnsibleModule

# The agent's own rule, repeated here because the host has only this module and the agent:
# letters, digits and _ . + -, 1 to 15 bytes, not starting with '-'.
IFACE = re.compile(r"[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,14}")


def agent_command(params, python):
    """The agent's command line, written by the agent's own capture_argv (imported from
    the zipapp itself: the flags are defined once, in the agent that parses them)."""
    sys.path.insert(0, params["agent"])
    try:
        from xdpcap.agent.command_line import CaptureArgs, capture_argv
    finally:
        sys.path.remove(params["agent"])
    args = CaptureArgs(
        iface=params["iface"],
        output=params["output"],
        duration_s=float(params["duration"]),
        count=params["count"],
        direction=params["direction"],
        start_at_ns=int(params["start_at_ns"]),
        xdp_hook=params["xdp_hook"] or None,
        process=params.get("process"),
        pid=params.get("pid"),
        comm=params.get("comm") or None,
        container=params.get("container") or None,
        filter_args=tuple(params["filter_args"]),
    )
    return [python, params["agent"], *capture_argv(args)]


def read_events(stdout):
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


def last_line(text):
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main():
    module = AnsibleModule(
        argument_spec=dict(
            agent=dict(type="path", required=True),
            iface=dict(type="str", required=True),
            output=dict(type="path", required=True),
            start_at_ns=dict(type="int", required=True),
            duration=dict(type="float", required=True),
            count=dict(type="int"),
            direction=dict(type="str", choices=["in", "out", "inout"], default="inout"),
            filter_args=dict(type="list", elements="str", default=[]),
            xdp_hook=dict(type="str"),
            process=dict(type="bool"),
            pid=dict(type="int"),
            comm=dict(type="str"),
            container=dict(type="str"),
            python=dict(type="path"),
        ),
        supports_check_mode=False,
    )
    params = module.params
    iface = params["iface"]
    if not IFACE.fullmatch(iface) or iface in (".", ".."):
        module.fail_json(msg="interface %r is not a valid interface name" % iface)
    if params["duration"] <= 0:
        module.fail_json(msg="duration must be greater than 0")
    # The agent bounds itself: its own deadline, and it refuses a start time far away.
    rc, stdout, stderr = module.run_command(
        agent_command(params, params["python"] or sys.executable)
    )
    events = read_events(stdout)
    errors = [e.get("message", "") for e in events if e["event"] == "error"]
    done = [e for e in events if e["event"] == "done"]
    if rc != 0 or errors or not done:
        reason = errors[0] if errors else last_line(stderr) or "the agent exited with %d" % rc
        module.fail_json(msg="%s: %s" % (iface, reason), rc=rc, stderr=stderr)
    summary = dict((k, v) for k, v in done[-1].items() if k != "event")
    late_ms = (summary.get("window_start_ns", 0) - params["start_at_ns"]) / 1e6
    for event in events:
        if event["event"] == "late":
            module.warn(
                "%s: the agent was ready %.1f ms after the planned start: raise "
                "xdpcap_start_margin" % (iface, event.get("late_ns", 0) / 1e6)
            )
    if summary.get("partial_reason"):
        module.warn("%s: partial capture: %s" % (iface, summary["partial_reason"]))
    module.exit_json(
        changed=True,
        summary=summary,
        file=params["output"],
        start_late_ms=round(late_ms, 3),
    )


if __name__ == "__main__":
    main()
