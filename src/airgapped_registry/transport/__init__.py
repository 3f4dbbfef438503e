"""Reaching registries: the OCI distribution client and what it needs to get through.

The client over ``http.client`` (keep-alive per thread, request counters, digest checks on
everything read or written), TLS contexts built from the files named and nothing else,
credentials and the Basic/Bearer token flow, and the throttle that spaces requests to a
source. It builds on :mod:`airgapped_registry.oci` and knows nothing of mirror lists, locks
or sync: callers hand it plain parameters (URLs, file paths, credentials).
"""
