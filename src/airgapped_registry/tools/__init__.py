"""The external programs the engine drives: skopeo and cosign.

Each wrapper builds argument lists (never a shell line), turns a
:class:`~airgapped_registry.transport.access.RegistryAccess` into the program's own flags and
files, and reads the program's output and errors. Programs run through an injected runner
(:data:`~airgapped_registry.tools.process.Runner`), so tests substitute a real program in a
temporary directory or a recording runner. Builds on the transport layer; knows nothing of
mirror lists or locks.
"""
