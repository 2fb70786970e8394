"""Secrets never reach the logs: everything every library logs at DEBUG, across
publish, consume, a handler failure and a failed login, passes `mailbag.workers.logs.Redact`.
Checked on the memory broker, the real RabbitMQ and SNS/SQS on moto over HTTP, with a
known password, AWS secret key, session token and message body marker."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from contextlib import asynccontextmanager

import pytest

from mailbag.broker import BrokerUnavailable, connect
from mailbag.broker.sqs import open_broker as open_sqs
from mailbag.workers import logs
from tests.conformance.env import eventually
from tests.moto_server import REGION, delete_prefixed
from tests.observability.conftest import observed, opened
from tests.rabbitmq.service import amqp_url

PASSWORD = f"pw-{uuid.uuid4().hex}"
SECRET_KEY = f"key-{uuid.uuid4().hex}"
SESSION_TOKEN = f"token-{uuid.uuid4().hex}"
BODY_MARKER = f"body-{uuid.uuid4().hex}"
SECRETS = {"password": PASSWORD, "secret key": SECRET_KEY, "session token": SESSION_TOKEN, "body": BODY_MARKER}


@pytest.fixture
def captured():
    """Everything logged, at DEBUG, through the handler `logs.configure` sets up."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("DEBUG", stream=stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def assert_no_secret(text: str) -> None:
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert not leaked, f"{leaked} leaked into the logs"


async def _flow(obs) -> None:
    """Publish, consume, a failure then success, and a poison message: all carrying the marker."""
    await obs.publish(b'{"fail_first": true, "note": "%s"}' % BODY_MARKER.encode())
    await obs.publish(b'{"note": "%s"' % BODY_MARKER.encode())  # poison: not JSON

    async def settled() -> bool:
        registry = obs.worker.metrics.registry
        labels = {"queue": obs.topic, "handler": "build.<locals>.job"}
        return (
            registry.get_sample_value("mailbag_messages_handled_total", labels) == 1
            and registry.get_sample_value("mailbag_messages_dead_lettered_total", labels) == 1
        )

    await eventually(settled, timeout=30, what="one handled after a retry, one dead-lettered")


@pytest.mark.parametrize("backend", ["memory", "rabbitmq"])
async def test_memory_and_rabbitmq_logs_carry_no_secret(captured, backend):
    # Given a login with a wrong password
    with pytest.raises(BrokerUnavailable) as refused:
        await connect(amqp_url().replace("guest@", f"{PASSWORD}@"))
    assert PASSWORD not in str(refused.value)
    # When messages are published, consumed, fail and are dead-lettered
    async with opened(backend) as broker, observed(broker, backend) as obs:
        await _flow(obs)
    # Then the debug output shows the work, and no secret
    text = captured.getvalue()
    assert "handler failed" in text and "aiormq" in text, text[-2000:]
    assert_no_secret(text)


@asynccontextmanager
async def _sqs(endpoint: str):
    prefix = f"r{uuid.uuid4().hex[:8]}-"
    broker = await open_sqs(f"sqs://?region={REGION}&endpoint={endpoint}&prefix={prefix}&wait=1")
    try:
        yield broker
    finally:
        await broker.close()
        await asyncio.to_thread(delete_prefixed, endpoint, prefix)


async def test_sqs_logs_carry_no_token_key_or_body(captured, moto_server, monkeypatch):
    # Given AWS credentials with a session token, and botocore logging at DEBUG
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    # When messages go through SNS/SQS, fail once, succeed, and one is poison
    async with _sqs(moto_server) as broker, observed(broker, "sqs") as obs:
        await _flow(obs)
    # Then botocore's requests and responses were logged, without a secret
    text = captured.getvalue()
    assert "Making request for OperationModel(name=Publish" in text and "Response body" in text, text[-2000:]
    assert_no_secret(text)


#: (a line carrying secrets, what stays of it); the ids name what stays, so they are the
#: same in every process (pytest-xdist workers collect them apart)
REDACTED = [
    (f"connecting to amqp://guest:{PASSWORD}@rabbit:5672/vh", "amqp://guest:***@rabbit:5672/vh"),
    (f"URL('amqps://svc:{PASSWORD}@host/')", "amqps://svc:***@host/"),
    (f"postgresql://app:{PASSWORD}@db/orders failed", "postgresql://app:***@db/orders failed"),
    (f"headers={{'X-Amz-Security-Token': b'{SESSION_TOKEN}', 'Host': 'sqs'}}", "'Host': 'sqs'"),
    (f"x-amz-security-token:{SESSION_TOKEN}\nhost:sqs", "host:sqs"),
    (f"aws_secret_access_key = {SECRET_KEY}", "aws_secret_access_key = ***"),
    (f"{{'SessionToken': '{SESSION_TOKEN}', 'SecretAccessKey': \"{SECRET_KEY}\"}}", "'SessionToken': ***"),
    (f"Authorization: 'AWS4-HMAC-SHA256 Credential=AKID/x, Signature={PASSWORD}'", "Authorization: ***"),
    (f"?X-Amz-Security-Token={SESSION_TOKEN}&X-Amz-Signature={PASSWORD}&a=1", "&a=1"),
    (f"password={PASSWORD} user=bob", "user=bob"),
    (f"amqp://guest:a/{PASSWORD}@rabbit/ up", "amqp://guest:***@rabbit/ up"),
    (f"postgresql://app:a@{PASSWORD}@db/orders", "postgresql://app:***@db/orders"),
    (f"Credentials(access_key='AKID', secret_key='{SECRET_KEY}', token='{SESSION_TOKEN}')", "access_key='AKID'"),
]


@pytest.mark.parametrize("line, kept", REDACTED, ids=[kept for _, kept in REDACTED])
def test_redact_masks_urls_and_credentials(line, kept):
    masked = logs.redact(line)
    assert_no_secret(masked)
    assert kept in masked


def test_botocore_payload_lines_keep_only_their_lead_in():
    # Given botocore's request line with a message body, as it logs it at DEBUG
    record = logging.LogRecord(
        "botocore.endpoint",
        logging.DEBUG,
        __file__,
        1,
        "Making request for %s with params: %s",
        ("OperationModel(name=SendMessage)", {"body": {"MessageBody": BODY_MARKER}}),
        None,
    )
    # When it passes the filter, then the body is gone and the operation is still named
    assert logs.Redact().filter(record)
    assert record.getMessage() == "Making request for OperationModel(name=SendMessage) with params: [redacted]"


def test_tracebacks_and_extras_are_redacted_too():
    try:
        raise ConnectionError(f"cannot reach amqp://u:{PASSWORD}@h/")
    except ConnectionError as exc:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, (type(exc), exc, exc.__traceback__))
    record.error = f"amqp://u:{PASSWORD}@h/"
    logs.Redact().filter(record)
    text = logs.KeyValueFormatter().format(record) + logs.json_formatter().format(record)
    assert_no_secret(text)
    assert "amqp://u:***@h/" in text


def test_a_record_whose_arguments_do_not_format_is_still_redacted():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"amqp://u:{PASSWORD}@h/ %d", ("not a number",), None)
    record.saga = f"postgresql://u:{PASSWORD}@db/x"
    logs.Redact().filter(record)
    assert_no_secret(record.getMessage() + record.saga)
