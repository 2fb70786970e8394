"""Broker URLs: masking passwords for display, and reading query options."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from mailbag.broker.errors import BrokerUrlError

#: a URL's password: scheme://user:PASSWORD@host. It runs to the URL's last '@', as a
#: password may hold '/', ':' or '@' itself (unencoded, which parsers get wrong).
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*:)[^\s'\"]+@")


def mask_url(url: str) -> str:
    """The URL (or any text) with every URL password replaced by `***`, safe to print or log."""
    return URL_PASSWORD.sub(r"\g<1>***@", url)


def scheme_of(url: str) -> str:
    if "://" not in url:
        raise BrokerUrlError(
            f"broker URL {mask_url(url)!r} has no scheme; expected e.g. memory://, amqp://host, sqs://"
        )
    return url.split("://", 1)[0].lower()


def query_options(url: str) -> dict[str, str]:
    """The URL's query string as a dict (last value wins)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
