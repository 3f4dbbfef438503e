"""What every module over the airgapped_registry engine shares: the options
that reach a registry over (m)TLS, and the one way to stop when the engine
is not importable on the host that runs the module.

An option the engine has a default for is None unless the user set it, and
is then not passed: the engine's default is the only one."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

REGISTRY_TLS_OPTIONS = {
    "ca_file": {"type": "path"},
    "cert_file": {"type": "path"},
    "key_file": {"type": "path", "no_log": False},  # a path, not the key
    "timeout": {"type": "float"},
}


def set_options(params, names):
    """The options among ``names`` the user set, by name: to pass as keyword arguments,
    leaving the others to the engine's defaults."""
    return {name: params[name] for name in names if params.get(name) is not None}


def registry_access(params):
    """Keyword arguments reaching the module's registry: TLS files and the timeout."""
    return set_options(params, REGISTRY_TLS_OPTIONS)


def engine_module(argument_spec, import_error, **kwargs):
    """An AnsibleModule with check mode and the TLS options; fails at once,
    naming the engine, when its import failed (``import_error``: a traceback)."""
    required_together = [("cert_file", "key_file"), *kwargs.pop("required_together", [])]
    module = AnsibleModule(
        argument_spec={**argument_spec, **REGISTRY_TLS_OPTIONS},
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
