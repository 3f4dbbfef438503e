"""The OCI model: what registries store, independent of how it is reached.

Media types, the grammar of repository names, tags and digests, content digests, the
parsing of manifests and indexes (descriptors, platforms, the filtered index a ``filter``
entry stores) and the layout of a Helm chart stored as an OCI artifact. Nothing here does
I/O or knows about mirror lists: every other layer builds on it.
"""
