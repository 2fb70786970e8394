"""The pytest plugin, registered through the `pytest11` entry point (installing
mailbag is enough; `pip install 'mailbag[testing]'` brings pytest-asyncio and moto).

- `mailbag_bus(app, broker=None, **options)`: a `TestBus` for the test, on
  `mailbag_broker_url` unless `broker` names one. `async with mailbag_bus(app) as bus`.
- `mailbag_broker_url`: `memory://`, or each `--mailbag-broker URL` given on the command
  line (the test runs once per URL); a test may also parametrize it itself.
- An `sqs://` URL without `endpoint` runs on moto in this process, with fake
  credentials and virtual time (`mailbag_moto` gives a test that moto directly);
  `--mailbag-real-aws` lets it reach AWS instead (the names then carry a prefix of
  their own per test, and what the test declared is deleted afterwards).
- An `amqp://` URL runs on that RabbitMQ with every name prefixed per test; what the
  test declared is deleted afterwards.
- A project that leaves pytest-asyncio's `asyncio_default_fixture_loop_scope` unset gets
  `function`, the default pytest-asyncio announces, instead of its deprecation warning.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from mailbag.broker import Broker, mask_url, scheme_of
from mailbag.testing.bus import TestBus
from mailbag.workers import App

FIXTURE = "mailbag_broker_url"
#: pytest-asyncio's setting it warns about when a project leaves it unset
LOOP_SCOPE = "asyncio_default_fixture_loop_scope"
#: credentials moto accepts; set only while a test runs on moto
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailbag")
    group.addoption(
        "--mailbag-broker",
        action="append",
        metavar="URL",
        help="run tests that use mailbag_broker_url on this broker (repeat for several; default memory://)",
    )
    group.addoption(
        "--mailbag-real-aws",
        action="store_true",
        help="let sqs:// URLs without an endpoint reach AWS with your credentials instead of moto",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Before pytest-asyncio reads it: an unset fixture loop scope becomes `function`
    (what pytest-asyncio will default to; a project's own setting is kept). pytest has
    no public way to default another plugin's setting, so it goes in getini's cache."""
    try:
        unset = not config.getini(LOOP_SCOPE)
    except ValueError:  # pytest-asyncio is not installed
        return
    if unset:
        config._inicache[LOOP_SCOPE] = "function"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if FIXTURE not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        if FIXTURE in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return  # the test chose its brokers itself
    urls = metafunc.config.getoption("--mailbag-broker") or ["memory://"]
    metafunc.parametrize(FIXTURE, urls, ids=[mask_url(u) for u in urls])


@pytest.fixture
def mailbag_broker_url(request: pytest.FixtureRequest) -> str:
    """The broker URL this run of the test uses (see `--mailbag-broker`)."""
    return str(getattr(request, "param", "memory://"))


@pytest.fixture
def mailbag_moto() -> Iterator[None]:
    """moto's AWS in this process for the test, with credentials it accepts: what an
    `sqs://` bus without endpoint runs on, for tests that talk to SQS themselves
    (a Lambda handler, `sqs_event`)."""
    with _moto():
        yield


@pytest.fixture
def mailbag_bus(mailbag_broker_url: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., TestBus]]:
    """`mailbag_bus(app, broker=None, **options)` -> a `TestBus` to enter with `async with`."""
    real_aws = bool(request.config.getoption("--mailbag-real-aws"))
    with contextlib.ExitStack() as stack:
        moto: list[bool] = []

        def make(app: App, broker: str | Broker | None = None, **options: Any) -> TestBus:
            target = mailbag_broker_url if broker is None else broker
            if isinstance(target, Broker):
                return TestBus(app, target, **options)
            scheme = scheme_of(target)
            on_moto = scheme == "sqs" and "endpoint" not in _query(target) and not real_aws
            if on_moto and not moto and "mailbag_moto" not in request.fixturenames:
                stack.enter_context(_moto())
                moto.append(True)
            if scheme == "sqs":
                # a one-second long poll: closing the bus waits for the one running, and
                # moto's does not notice a message made visible again
                target = _with_query(target, wait="1", linger="0")
            if on_moto:
                options.setdefault("virtual_time", True)
            elif scheme == "sqs":
                target = _with_query(target, prefix=_prefix())
                options.setdefault("delete_declared", True)
            elif scheme in ("amqp", "amqps"):
                options.setdefault("prefix", _prefix())
            return TestBus(app, target, **options)

        yield make


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def _with_query(url: str, **defaults: str) -> str:
    """`url` with the query options in `defaults` it does not set itself."""
    base = url.split("?", 1)[0]
    return f"{base}?{urlencode({**defaults, **_query(url)})}"


@contextlib.contextmanager
def _moto() -> Iterator[None]:
    """moto's AWS in this process, with credentials it accepts, for the test."""
    try:
        from moto import mock_aws
    except ModuleNotFoundError:
        pytest.fail("sqs:// without an endpoint runs on moto: pip install 'mailbag[testing]'", pytrace=False)
    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    try:
        with mock_aws():
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
