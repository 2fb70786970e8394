"""Broker URLs: masking passwords for display, checking that a URL parses as written,
and reading query options (refusing the ones an adapter does not know)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from mailbag.broker.errors import BrokerUrlError

#: a URL's password: scheme://user:PASSWORD@host. It runs to the URL's last '@', as a
#: password may hold '/', ':' or '@' itself (unencoded, which parsers get wrong).
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*:)[^\s'\"]+@")

#: how to percent-encode a password, shown when a URL does not parse
ENCODE_HINT = (
    "percent-encode reserved characters (@ : / ? # [ ] %) in the user and password, "
    "e.g. p@ss/w0rd! as p%40ss%2Fw0rd%21: "
    "python3 -c \"from urllib.parse import quote; print(quote('PASSWORD', safe=''))\""
)


def mask_url(url: str) -> str:
    """The URL (or any text) with every URL password replaced by `***`, safe to print or log."""
    return URL_PASSWORD.sub(r"\g<1>***@", url)


def scheme_of(url: str) -> str:
    if "://" not in url:
        raise BrokerUrlError(
            f"broker URL {mask_url(url)!r} has no scheme; expected e.g. memory://, amqp://host, sqs://"
        )
    return url.split("://", 1)[0].lower()


def hosts_of(url: str) -> list[str]:
    """The URL's `host[:port]` entries: one, or the nodes of a cluster listed with commas
    (`amqp://user:pass@node1:5672,node2:5672/vhost`), which share the user, vhost and query."""
    return [h.strip() for h in urlsplit(url).netloc.rpartition("@")[2].split(",")]


def check_parses(url: str) -> None:
    """Raise `BrokerUrlError` when `url` does not mean what it reads: an unencoded '@',
    '/', '?' or '#' in a password splits the URL in the wrong place, and the broker
    would then be reported unreachable at a host that was never meant. Every host of a
    node list must parse too."""
    parts = urlsplit(url)
    shown = mask_url(url)
    if "@" in parts.path + parts.query + parts.fragment:
        raise BrokerUrlError(f"broker URL {shown!r} does not parse: {ENCODE_HINT}")
    hosts = hosts_of(url)
    if len(hosts) > 1 and not all(hosts):
        raise BrokerUrlError(f"broker URL {shown!r} has an empty host in its node list")
    for host in hosts:
        try:
            urlsplit(f"//{host}").port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise BrokerUrlError(f"broker URL {shown!r} does not parse (bad port): {ENCODE_HINT}") from None


def queue_kind(url: str) -> Literal["classic", "quorum"] | None:
    """The URL's `queue=classic|quorum` option, read the same by `connect()` and
    `mailbag compare`: `quorum` makes every queue declared through the broker a quorum
    queue; `classic` keeps each queue's own kind (classic unless it says otherwise)."""
    kind = query_options(url).get("queue")
    if kind is None or kind == "classic":
        return None if kind is None else "classic"
    if kind != "quorum":
        raise BrokerUrlError(f"queue={kind!r} in {mask_url(url)!r}: expected queue=classic or queue=quorum")
    return "quorum"


def query_options(url: str) -> dict[str, str]:
    """The URL's query string as a dict (last value wins)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def check_options(url: str, known: Iterable[str]) -> dict[str, str]:
    """The URL's query options; `BrokerUrlError` naming any that is not in `known`, so a
    misspelt or misplaced option is never silently ignored."""
    options = query_options(url)
    allowed = set(known)
    unknown = sorted(set(options) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed)) or "none"
        raise BrokerUrlError(f"{mask_url(url)}: unknown option(s) {', '.join(unknown)}; known: {expected}")
    return options
