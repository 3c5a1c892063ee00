#!/usr/bin/python
"""Set kernel parameters now, and warn instead of failing where the kernel refuses.

ansible.posix.sysctl is not part of ansible-core, and a container (systemd-nspawn, LXC) may
not change `vm.*` or `fs.*`: those keep their value, the module says so in a warning and the
play goes on. Persisting the values across reboots is the caller's job (a file in
/etc/sysctl.d/, which systemd-sysctl applies at boot).
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: webchat_sysctl
short_description: Apply kernel parameters now; warn where a container may not change them
description:
  - Compares each parameter with /proc/sys and writes the ones that differ.
  - A parameter the kernel refuses to change (EACCES, EPERM, EROFS; typical in containers)
    is reported in a warning and left as it is; the task does not fail and reports no change
    for it.
options:
  values:
    description: Parameters as dotted names, e.g. C(net.core.somaxconn), and their values.
    type: dict
    required: true
  at_least:
    description:
      - Parameters whose value is a minimum: a host that already has more keeps it (a big
        machine's C(fs.file-max) is never lowered).
    type: list
    elements: str
    default: []
author: webchat
"""

EXAMPLES = r"""
- name: Apply the kernel parameters now
  webchat_sysctl:
    values:
      net.core.somaxconn: 65535
"""

RETURN = r"""
applied:
  description: Parameters that were changed.
  type: dict
  returned: always
refused:
  description: Parameters the kernel refused to change, with their current value.
  type: dict
  returned: always
effective:
  description: Every parameter with the value it has now (or would have, in check mode).
  type: dict
  returned: always
"""

import errno
import os

from ansible.module_utils.basic import AnsibleModule

REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _path(name):
    return os.path.join("/proc/sys", *name.split("."))


def _normal(value):
    """Kernel values print whitespace-separated (e.g. "1024\t65535"): compare them as words."""
    return " ".join(str(value).split())


def _above(current, wanted):
    """Whether a single-number value is already at least the wanted one."""
    try:
        return int(current) >= int(_normal(wanted))
    except ValueError:
        return False


def main():
    module = AnsibleModule(
        argument_spec={
            "values": {"type": "dict", "required": True},
            "at_least": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    applied, refused, effective = {}, {}, {}
    for name, wanted in sorted(module.params["values"].items()):
        path = _path(name)
        try:
            with open(path) as handle:
                current = _normal(handle.read())
        except FileNotFoundError:
            module.fail_json(msg=f"kernel parameter {name} does not exist ({path})")
        if name in module.params["at_least"] and _above(current, wanted):
            effective[name] = current
            continue
        effective[name] = current
        if current == _normal(wanted):
            continue
        try:
            # Opening for writing is enough to learn whether the kernel lets us (a read-only
            # /proc/sys in a container refuses the open), and changes nothing: --check too.
            handle = os.open(path, os.O_WRONLY)
            try:
                if not module.check_mode:
                    os.write(handle, _normal(wanted).encode())
            finally:
                os.close(handle)
        except OSError as exc:
            if exc.errno not in REFUSED:
                module.fail_json(msg=f"cannot set {name} to {wanted}: {exc.strerror}")
            refused[name] = current
            module.warn(
                f"kernel parameter {name} stays {current} (wanted {_normal(wanted)}): "
                f"this host may not change it ({exc.strerror}; a container?)"
            )
            continue
        applied[name] = effective[name] = _normal(wanted)
    module.exit_json(changed=bool(applied), applied=applied, refused=refused, effective=effective)


if __name__ == "__main__":
    main()
