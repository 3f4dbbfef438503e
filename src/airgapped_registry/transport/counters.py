"""Request counters: what a client did between two points of a run, for reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from airgapped_registry.transport.registry import RegistryClient


@dataclass(frozen=True)
class RequestCount:
    """A snapshot of a client's counters, to report the requests made between two points."""

    total: int
    by_method: Counter[str]

    @classmethod
    def of(cls, client: RegistryClient) -> RequestCount:
        return cls(client.requests, client.requests_by_method.copy())

    def since(self, client: RegistryClient) -> dict[str, Any]:
        by_method = client.requests_by_method - self.by_method
        return {"total": client.requests - self.total, "by_method": dict(sorted(by_method.items()))}
