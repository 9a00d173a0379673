#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xdpcap developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: plan
short_description: Prepare an xdpcap capture on the controller
version_added: 0.1.0
description:
  - Runs on the controller (C(delegate_to=localhost), C(run_once)), before any host is
    changed.
  - Checks the capture settings, compiles every distinct capture filter to cBPF with the
    controller's libpcap (as C(xdpcap run) does), and writes the agent zipapp that every host
    will run (the same bundle C(xdpcap run) uploads).
  - A bad filter or setting fails here, with one line, before any host is contacted.
options:
  output:
    description: The merged pcapng file the play will write.
    type: path
    required: true
  workdir:
    description:
      - Folder for the agent bundle and the captures fetched from the hosts.
      - Default C(OUTPUT_STEM-hosts) beside O(output).
    type: path
  duration:
    description: Seconds each host captures.
    type: float
    default: 10
  count:
    description: Stop each host after this many packets are written.
    type: int
  filters:
    description:
      - The capture filter expressions (tcpdump's language) in use, one per host;
        empty strings mean no filter.
    type: list
    elements: str
    default: []
requirements:
  - The C(xdpcap) Python package, importable by the controller's Python
    (C(ansible_playbook_python)).
  - libpcap on the controller when a filter is given.
author:
  - xdpcap developers (@xdpcap)
"""

EXAMPLES = r"""
- name: Prepare the capture
  xdpcap.capture.plan:
    output: /tmp/merged.pcapng
    duration: 8
    filters: ["icmp or udp port 53", ""]
  run_once: true
  delegate_to: localhost
  register: xdpcap_plan
"""

RETURN = r"""
output:
  description: The merged file's absolute path.
  returned: success
  type: str
bundle:
  description: Path of the agent zipapp on the controller.
  returned: success
  type: str
bundle_sha256:
  description: SHA-256 of the agent zipapp.
  returned: success
  type: str
workdir:
  description: Folder the captures are fetched into.
  returned: success
  type: str
filter_args:
  description: For each filter expression, the agent arguments that carry its checked cBPF programs.
  returned: success
  type: dict
duration:
  description: The checked duration, in seconds.
  returned: success
  type: float
count:
  description: The checked packet count, or null.
  returned: success
  type: int
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from xdpcap.agent import validate
    from xdpcap.agent.errors import XdpcapError
    from xdpcap.agent.filter import spec
    from xdpcap.agent.filter.cbpf import FilterError
    from xdpcap.orchestrator.remote.bundle import build_agent_bundle
except ImportError:
    XDPCAP_IMPORT_ERROR = traceback.format_exc()
else:
    XDPCAP_IMPORT_ERROR = None


def default_workdir(output):
    stem = os.path.splitext(os.path.basename(output))[0] or "xdpcap"
    return os.path.join(os.path.dirname(output) or ".", stem + "-hosts")


def compile_filters(expressions):
    """Each distinct expression once: {expression: agent arguments}; '' means no filter."""
    compiled = {"": []}
    for text in expressions:
        if text in compiled:
            continue
        expression = spec.expression_text(text)
        compiled[text] = spec.compile_filter(expression).agent_args() if expression else []
    return compiled


def main():
    module = AnsibleModule(
        argument_spec=dict(
            output=dict(type="path", required=True),
            workdir=dict(type="path"),
            duration=dict(type="float", default=10),
            count=dict(type="int"),
            filters=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    if XDPCAP_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("xdpcap"), exception=XDPCAP_IMPORT_ERROR)
    params = module.params
    output = os.path.abspath(params["output"])
    if os.path.isdir(output):
        module.fail_json(msg="xdpcap_output %s is a folder, not a file" % output)
    if not os.path.isdir(os.path.dirname(output)):
        module.fail_json(msg="xdpcap_output %s: its folder does not exist" % output)
    workdir = os.path.abspath(params["workdir"] or default_workdir(output))
    try:
        duration = validate.duration(params["duration"])
        count = validate.count(params["count"])
        filter_args = compile_filters(params["filters"])
    except (XdpcapError, FilterError) as exc:
        module.fail_json(msg=str(exc))
    result = dict(
        changed=False,
        output=output,
        workdir=workdir,
        duration=duration,
        count=count,
        filter_args=filter_args,
        bundle=None,
        bundle_sha256=None,
    )
    if module.check_mode:
        module.exit_json(**result)
    bundle = build_agent_bundle()
    try:
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        path = os.path.join(workdir, bundle.filename)
        with open(path, "wb") as stream:
            stream.write(bundle.data)
    except OSError as exc:
        module.fail_json(msg="cannot write the agent bundle in %s: %s" % (workdir, exc))
    result.update(changed=True, bundle=path, bundle_sha256=bundle.sha256)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
