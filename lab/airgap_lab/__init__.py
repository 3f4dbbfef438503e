"""The lab's own content, kept out of the shipped engine.

:mod:`airgap_lab.sample` generates the deterministic sample upstream the lab, the tests and
the benchmarks mirror; ``airgap-lab sample push|catalog`` (or ``python -m airgap_lab``) is
its command line. It builds on the engine (``airgapped_registry``); the engine never imports
it, and the wheel ``roles/mirror`` installs on hosts does not contain it.
"""
