"""What a refused mirror list says: every problem with its file, line, entry and cause.

A check collects the problems of one file in :class:`Problems` and raises them all at once
as one :class:`SpecError`, so a user fixes a list in one round, e.g.
``mirror.yaml:14: images[3] 'nginx:latest': floating tag, pin a version or a digest``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from airgapped_registry.errors import AirgapError


@dataclass(frozen=True)
class Problem:
    """One reason a mirror list is refused: where (file and line), which entry
    (``images[3] 'nginx'``, ``sources.upstream``, or none for the file itself) and why."""

    file: str
    line: int
    entry: str
    cause: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.entry}: {self.cause}" if self.entry else f"{where}: {self.cause}"


class SpecError(AirgapError):
    """A mirror list was refused; ``problems`` holds one ``file:line: entry: cause`` each,
    in line order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        ordered = sorted(problems, key=lambda problem: problem.line)
        self.problems = list(dict.fromkeys(map(str, ordered)))
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects every problem of one file, so that all are reported at once."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[Problem] = []

    def add(self, line: int, entry: str, cause: str) -> None:
        self.found.append(Problem(self.file, line, entry, cause))

    def __len__(self) -> int:
        return len(self.found)

    def refuse(self) -> SpecError:
        return SpecError(self.found)
