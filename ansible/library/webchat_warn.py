#!/usr/bin/python
"""Show a warning in the play's output and go on (ansible.builtin has no task for that)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: webchat_warn
short_description: Show a warning and go on
description:
  - Reports I(msg) as an Ansible warning; changes nothing and never fails.
options:
  msg:
    description: The warning.
    type: str
    required: true
author: webchat
"""

EXAMPLES = r"""
- name: Say that Grafana was not installed
  webchat_warn:
    msg: Grafana's APT repository could not be reached; Grafana was not installed.
"""

RETURN = r"""
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec={"msg": {"type": "str", "required": True}}, supports_check_mode=True
    )
    module.warn(module.params["msg"])
    module.exit_json(changed=False)


if __name__ == "__main__":
    main()
