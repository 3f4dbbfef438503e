"""Plain HTTP(S) reads outside the registry API: a classic Helm repository's files."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Callable

from airgapped_registry import defaults
from airgapped_registry.errors import UrlError
from airgapped_registry.transport.tls import tls_context

UrlFetcher = Callable[[str], bytes]


def read_url(url: str) -> bytes:
    """The body of ``url`` (system trust, as :func:`tls_context` builds it, for https)."""
    context = tls_context(None, None, None) if url.startswith("https:") else None
    request = urllib.request.Request(url, headers={"User-Agent": "airgapped-registry"})
    try:
        with urllib.request.urlopen(
            request, timeout=defaults.REQUEST_TIMEOUT, context=context
        ) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        raise UrlError(f"GET {url}: {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UrlError(f"GET {url}: {reason}") from exc
