"""Inventory plugin: the lab's hosts and zones, from the one lab definition.

The same definition (``inventories/lab/lab.yml``) serves ``playbooks/lab.yml``,
which creates the Docker networks and containers, the lab inventory, and the
molecule scenarios, which run it under another prefix so a test run never
touches the lab a user stood up.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: airgap_lab
short_description: Hosts of the Airgapped Registry lab, one container per host
description:
  - Reads the lab definition (zones as Docker networks, hosts as systemd
    containers) and yields hosts that Ansible reaches with the
    C(community.docker.docker) connection.
  - Sets C(lab_prefix), C(lab_networks) and C(lab_hosts) on the C(all) group, so
    the lab playbook creates exactly what the inventory describes.
options:
  plugin:
    description: Token that marks the file as this plugin's.
    required: true
    choices: [airgap_lab]
  prefix:
    description:
      - Prefix of every container, network and image name, so nothing else on
        the machine clashes and a test lab can stand beside the user's lab.
    type: str
    default: agr
    env:
      - name: AIRGAP_LAB_PREFIX
  networks:
    description: "Zone name to C({internal: bool}); internal zones have no egress."
    type: dict
    required: true
  hosts:
    description: "Host name to C({groups: [...], networks: [...]})."
    type: dict
    required: true
"""

EXAMPLES = r"""
# inventories/lab/lab.yml
plugin: airgap_lab
networks:
  upstream: {internal: false}
  dmz: {internal: true}
hosts:
  relay: {groups: [relays], networks: [upstream, dmz]}
"""

import re

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class InventoryModule(BaseInventoryPlugin):
    NAME = "airgap_lab"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith((".yml", ".yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        prefix = self.get_option("prefix")
        networks = self.get_option("networks")
        hosts = self.get_option("hosts")
        self._validate(path, prefix, networks, hosts)

        lab_networks = {
            zone: {"name": f"{prefix}-{zone}", "internal": bool(spec.get("internal", True))}
            for zone, spec in networks.items()
        }
        lab_hosts = {}
        self.inventory.add_group("lab")
        for host, spec in hosts.items():
            container = f"{prefix}-{host}"
            zones = list(spec["networks"])
            lab_hosts[host] = {
                "container": container,
                "networks": zones,
                # A host with no zone that has egress gets no default route.
                "egress": any(not lab_networks[z]["internal"] for z in zones),
            }
            self.inventory.add_host(host, group="lab")
            for group in spec.get("groups", []):
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            self.inventory.set_variable(host, "ansible_host", container)
            self.inventory.set_variable(host, "ansible_connection", "community.docker.docker")
            self.inventory.set_variable(host, "ansible_python_interpreter", "/usr/bin/python3")
            self.inventory.set_variable(host, "lab_zones", zones)

        self.inventory.set_variable("all", "lab_prefix", prefix)
        self.inventory.set_variable("all", "lab_networks", lab_networks)
        self.inventory.set_variable("all", "lab_hosts", lab_hosts)

    @staticmethod
    def _validate(path, prefix, networks, hosts):
        if not NAME.match(prefix):
            raise AnsibleParserError(
                f"{path}: prefix {prefix!r}: use lower-case letters, digits and '-'"
            )
        for host, spec in hosts.items():
            if not NAME.match(host):
                raise AnsibleParserError(f"{path}: hosts.{host}: not a valid host name")
            unknown = [z for z in spec.get("networks", []) if z not in networks]
            if not spec.get("networks"):
                raise AnsibleParserError(f"{path}: hosts.{host}: names no network")
            if unknown:
                raise AnsibleParserError(
                    f"{path}: hosts.{host}: unknown network(s) {', '.join(unknown)}"
                )
