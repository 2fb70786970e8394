"""Broker URLs: masking passwords for display, and reading query options."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

from broker.errors import BrokerUrlError


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, safe to print or log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def scheme_of(url: str) -> str:
    if "://" not in url:
        raise BrokerUrlError(f"broker URL {mask_url(url)!r} has no scheme; expected e.g. memory://, amqp://host, sqs://")
    return url.split("://", 1)[0].lower()


def query_options(url: str) -> dict[str, str]:
    """The URL's query string as a dict (last value wins)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
