"""What every module over the airgapped_registry engine shares: the options
that reach a registry (TLS files, credentials, timeout), the same as the
CLI's ``--ca-file --cert-file --key-file --auth-file --timeout`` (not for the
provenance modules, which the provenance file tells how to reach the backend and
the gateway), and the one way to stop when the engine is not importable on the
host that runs the module.

An option the engine has a default for is None unless the user set it, and
is then not passed: the engine's default is the only one."""

from __future__ import annotations

import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

# The keyword arguments of the engine's RegistryAccess.endpoint() and of a sync's
# Destination, as the CLI's registry_files() passes them.
REGISTRY_OPTIONS = {
    "ca_file": {"type": "path"},
    "cert_file": {"type": "path"},
    "key_file": {"type": "path", "no_log": False},  # a path, not the key
    "auth_file": {"type": "path", "no_log": False},  # a path, not the credentials
    "timeout": {"type": "float"},
}


def set_options(params, names):
    """The options among ``names`` the user set, by name: to pass as keyword arguments,
    leaving the others to the engine's defaults."""
    return {name: params[name] for name in names if params.get(name) is not None}


def registry_files(params):
    """How to reach O(registry), as keyword arguments of ``RegistryAccess.endpoint()`` and
    ``Destination``: TLS files, credentials and the timeout the user set."""
    return set_options(params, REGISTRY_OPTIONS)


def registry_client(params):
    """A client for O(registry) with those files and credentials, as the CLI builds one."""
    from airgapped_registry.transport.access import RegistryAccess

    return RegistryAccess.endpoint(params["registry"], **registry_files(params)).client()


def registry_failure(message, params):
    """``message`` (an engine error, or a report's problems) for ``fail_json``: when it holds
    a 401 of O(registry) itself (the engine writes ``METHOD URL: 401 ...``) and O(auth_file)
    is unset, it says what is missing. A source's 401 is the mirror list's business (its
    ``credentials``), not this option's."""
    message = str(message)
    registry = (params.get("registry") or "").rstrip("/")
    unauthorized = re.search(re.escape(registry) + r"/v2/\S*: 401\b", message)
    if registry and unauthorized and not params.get("auth_file"):
        return f"{message} (no auth_file given: {registry} asks for credentials)"
    return message


def engine_module(argument_spec, import_error, *, registry=True, **kwargs):
    """An AnsibleModule with check mode and the registry options; fails at once,
    naming the engine, when its import failed (``import_error``: a traceback).

    ``registry=False``: a module configured by the registry host's provenance file, which
    says how to reach the backend and the gateway; it takes no registry options."""
    required_together = list(kwargs.pop("required_together", []))
    shared = {}
    if registry:
        required_together.insert(0, ("cert_file", "key_file"))
        shared = REGISTRY_OPTIONS
    module = AnsibleModule(
        argument_spec={**argument_spec, **shared},
        required_together=required_together,
        supports_check_mode=True,
        **kwargs,
    )
    if import_error:
        module.fail_json(
            msg=missing_required_lib("airgapped_registry (the project's engine)"),
            exception=import_error,
        )
    return module
