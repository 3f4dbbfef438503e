"""Action plugin: say something the operator must not miss, as an Ansible warning.

``ansible.builtin.debug`` prints in the colour of every other "ok"; this prints
``[WARNING]: ...`` like Ansible's own warnings, runs on the controller only, changes
nothing and never fails the run (site.yml's word on certificates nobody renews).
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

DOCUMENTATION = r"""
name: airgap_warn
short_description: Print a warning the operator must not miss
description:
  - Prints O(msg) as an Ansible warning on the controller; changes nothing.
options:
  msg:
    description: The warning.
    type: str
    required: true
"""

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("msg",))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        msg = self._task.args.get("msg")
        if not msg:
            raise AnsibleActionFail("airgap_warn: msg is required")
        display.warning(str(msg))
        result.update(changed=False, msg=str(msg))
        return result
