"""Platforms: ``os/arch[/variant]`` as index entries carry them and mirror lists ask for them."""

from __future__ import annotations

import re
from typing import Any

_PLATFORM = re.compile(r"([a-z0-9]+)/([a-z0-9_]+)(?:/([a-z0-9]+))?")


def parse_platform(text: str) -> tuple[str, str, str | None] | None:
    """``linux/arm/v7`` → ``("linux", "arm", "v7")``; None when not ``os/arch[/variant]``."""
    match = _PLATFORM.fullmatch(text)
    return (match[1], match[2], match[3]) if match else None


def platform_text(platform: Any) -> str | None:
    """An index entry's ``platform`` object as ``os/arch[/variant]`` (None without an os)."""
    if not isinstance(platform, dict) or not platform.get("os"):
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(part) for part in parts if part)


def platform_matches(platform: str | None, wanted: str) -> bool:
    """Whether an index child's platform is the one asked for.

    A wanted platform without variant matches every variant of its os/arch; arm64 without a
    variant is arm64/v8, as containerd normalises it.
    """
    have = parse_platform(platform or "")
    want = parse_platform(wanted)
    if have is None or want is None or have[:2] != want[:2]:
        return False
    if want[2] is None:
        return True
    default = "v8" if have[1] == "arm64" else None
    return (have[2] or default) == want[2]
