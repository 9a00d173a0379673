#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdpcap developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: merge
short_description: Merge the hosts' xdpcap captures into one pcapng on the controller
version_added: 0.1.0
description:
  - Runs on the controller (C(delegate_to=localhost), C(run_once)) after the captures were
    fetched.
  - Checks every fetched file against the size and SHA-256 its agent reported, aligns the
    hosts' clocks from the traffic they exchanged, and merges by time with the same code as
    C(xdpcap run) (one pcapng interface per C(host:iface)).
  - Give it only the hosts that succeeded (C(ansible_play_hosts)); a file that does not match
    its summary is left out with a warning.
options:
  captures:
    description:
      - One entry per host, with keys C(host), C(address), C(file) (the fetched capture on the
        controller) and C(summary) (the summary M(xdpcap.capture.agent) returned).
    type: list
    elements: dict
    required: true
  output:
    description: The merged pcapng file.
    type: path
    required: true
  report:
    description:
      - A JSON report (per-host summaries, clock alignment, merge).
      - Default C(run.json) beside the fetched files.
    type: path
  clock_correction:
    description: Align the hosts' clocks from their traffic before merging.
    type: bool
    default: true
requirements:
  - The C(xdpcap) Python package, importable by the controller's Python.
author:
  - xdpcap developers (@xdpcap)
"""

EXAMPLES = r"""
- name: Merge what the hosts captured
  xdpcap.capture.merge:
    output: /tmp/merged.pcapng
    captures: "{{ ansible_play_hosts | map('extract', hostvars, 'xdpcap_capture') | list }}"
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
output:
  description: The merged pcapng file.
  returned: success
  type: str
packets:
  description: Packets in the merged file.
  returned: success
  type: int
interfaces:
  description: The merged file's interfaces (C(host:iface)), by interface id.
  returned: success
  type: list
  elements: str
hosts:
  description: The hosts merged.
  returned: success
  type: list
  elements: str
excluded:
  description: Hosts left out, with the reason.
  returned: success
  type: dict
report:
  description: Path of the JSON report.
  returned: success
  type: str
clock_alignment:
  description: How the hosts' clocks were aligned (one line).
  returned: success
  type: str
"""

import json
import os
import traceback
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from xdpcap.agent.errors import XdpcapError
    from xdpcap.orchestrator.remote.host_files import sha256_of
    from xdpcap.orchestrator.remote.state import HostState, Phase
    from xdpcap.orchestrator.run.results import merge_states
except ImportError:
    XDPCAP_IMPORT_ERROR = traceback.format_exc()
else:
    XDPCAP_IMPORT_ERROR = None


def check_capture(capture):
    """The HostState of one fetched capture, or a reason to leave it out."""
    for key in ("host", "file", "summary"):
        if not capture.get(key):
            return None, "no %s given" % key
    summary = capture["summary"]
    path = capture["file"]
    try:
        size = os.path.getsize(path)
        digest = sha256_of(Path(path))
    except OSError as exc:
        return None, "cannot read %s: %s" % (path, exc.strerror or exc)
    if size != summary.get("file_size") or digest != summary.get("file_sha256"):
        return None, "%s does not match the agent's size and sha256" % path
    state = HostState(
        str(capture["host"]), str(capture.get("address") or capture["host"]), summary["iface"]
    )
    state.move(Phase.DONE)
    state.local_file = path
    state.summary = summary
    state.sha256 = digest
    state.window_start_ns = summary.get("window_start_ns")
    state.filter = summary.get("filter")
    state.direction = summary.get("direction", "inout")
    return state, None


def host_report(state, capture):
    data = state.to_dict()
    data["start_late_ms"] = capture.get("start_late_ms")
    return data


def main():
    module = AnsibleModule(
        argument_spec=dict(
            captures=dict(type="list", elements="dict", required=True),
            output=dict(type="path", required=True),
            report=dict(type="path"),
            clock_correction=dict(type="bool", default=True),
        ),
        supports_check_mode=False,
    )
    if XDPCAP_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("xdpcap"), exception=XDPCAP_IMPORT_ERROR)
    params = module.params
    states, excluded, reports = [], {}, []
    for capture in params["captures"]:
        state, reason = check_capture(capture)
        if state is None:
            excluded[str(capture.get("host"))] = reason
            module.warn("%s: left out of the merge: %s" % (capture.get("host"), reason))
        else:
            states.append(state)
            reports.append((state, capture))
    if not states:
        module.fail_json(
            msg="nothing to merge: no host's capture arrived intact", excluded=excluded
        )
    output = os.path.abspath(params["output"])
    try:
        report = merge_states(states, output, clock_correction=params["clock_correction"])
    except XdpcapError as exc:
        module.fail_json(msg="merge failed: %s" % exc, excluded=excluded)
    for warning in report.warnings:
        module.warn(warning)
    alignment = report.alignment.summary() if report.alignment is not None else None
    report_path = params["report"] or os.path.join(
        os.path.dirname(states[0].local_file), "run.json"
    )
    data = dict(
        merged=output,
        packets=report.packets,
        interfaces=report.interfaces,
        clock_alignment=report.alignment.to_dict() if report.alignment is not None else None,
        excluded=excluded,
        hosts=[host_report(state, capture) for state, capture in reports],
    )
    with open(report_path, "w") as stream:
        json.dump(data, stream, indent=2, default=str)
    module.exit_json(
        changed=True,
        output=output,
        packets=report.packets,
        interfaces=report.interfaces,
        hosts=[state.name for state in states],
        excluded=excluded,
        report=report_path,
        clock_alignment=alignment,
    )


if __name__ == "__main__":
    main()
