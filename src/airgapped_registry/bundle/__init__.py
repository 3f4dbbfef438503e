"""Offline bundles: the format on disk, full and delta export, the registry's inventory.

docs/bundles.md describes the format and the commands.
"""
