"""Reading why a message died from what travels with it: our stamp, RabbitMQ's own
dead-lettering headers, or nothing at all (an SQS redrive)."""

from datetime import UTC, datetime

from mailbag.broker import Message
from mailbag.broker import headers as h
from mailbag.dlq import DeadLetter, dump, load


def _dead(headers: dict) -> Message:
    return Message("orders.placed", b'{"order": 7}', headers={"tenant": "acme", **headers}, correlation_id="c-1")


def test_our_stamp_gives_reason_error_attempts_origin_and_host():
    try:
        raise TimeoutError("payment gateway did not answer")
    except TimeoutError as exc:
        stamp = h.dead_letter_stamp("orders.placed", "payments.charge", 5, "failed after 5 attempt(s)", exc)

    record = DeadLetter.from_message(_dead(stamp), "payments.charge.dlq", "payments.charge")

    assert record.reason == "failed after 5 attempt(s)"
    assert (record.error_type, record.error_message) == ("TimeoutError", "payment gateway did not answer")
    assert "raise TimeoutError" in record.traceback
    assert record.attempts == 5 and record.source_queue == "payments.charge"
    assert record.first_failed_at == record.last_failed_at and record.last_failed_at.tzinfo is not None
    assert record.worker_host == stamp[h.WORKER_HOST]


def test_original_message_keeps_everything_but_the_death_headers():
    stamp = h.dead_letter_stamp("orders.placed", "q", 2, "rejected", None)
    dead = _dead(
        {
            **stamp,
            "x-death": [{"queue": "q", "reason": "rejected", "count": 1}],
            "x-delivery-count": 2,
            h.ATTEMPTS_USED: 1,
        }
    )

    original = DeadLetter.from_message(dead, "q.dlq").message

    assert original.headers == {"tenant": "acme"}
    assert (original.id, original.body, original.correlation_id) == (dead.id, dead.body, "c-1")


def test_rabbitmq_quorum_delivery_limit_reads_as_delivery_limit_exceeded():
    died = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    dead = _dead(
        {
            "x-death": [{"queue": "inventory.reserve", "reason": "delivery_limit", "count": 1, "time": died}],
            "x-first-death-reason": "delivery_limit",
            "x-first-death-queue": "inventory.reserve",
            "x-delivery-count": 6,
        }
    )

    record = DeadLetter.from_message(dead, "inventory.reserve.dlq", "inventory.reserve")

    assert record.reason == h.DELIVERY_LIMIT_EXCEEDED
    assert (record.source_queue, record.attempts, record.last_failed_at) == ("inventory.reserve", 6, died)


def test_rabbitmq_rejections_count_as_attempts_and_time_spans_the_deaths():
    # Given x-death as some adapters pass it on: JSON text, epoch times, most recent first
    x_death = (
        '[{"queue": "q", "reason": "rejected", "count": 3, "time": 1714564800},'
        ' {"queue": "q.retry", "reason": "expired", "count": 2, "time": 1714561200}]'
    )

    record = DeadLetter.from_message(_dead({"x-death": x_death}), "q.dlq")

    assert record.reason == "rejected by a consumer"
    assert record.attempts == 3 and record.source_queue == "q"
    assert record.first_failed_at < record.last_failed_at


def test_sqs_redrive_without_a_stamp_is_delivery_limit_exceeded_with_the_receive_count():
    record = DeadLetter.from_message(_dead({"x-delivery-count": "4"}), "q.dlq", "q")

    assert record.reason == h.DELIVERY_LIMIT_EXCEEDED
    assert record.attempts == 4 and record.source_queue == "q"
    assert record.error_type is None and record.message.headers == {"tenant": "acme"}


def test_export_lines_read_back_byte_identical(tmp_path):
    body = bytes(range(256))  # not UTF-8, not JSON: must survive as it is
    dead = Message(
        "t",
        body,
        content_type="application/octet-stream",
        type="Blob",
        headers={"s": "x", "i": 5, "f": 1.5, "b": True, "n": "5"},
        ordering_key="k",
    )
    record = DeadLetter.from_message(dead, "q.dlq", "q")
    path = tmp_path / "dead.jsonl"

    with open(path, "w") as fh:
        dump([record], fh)
    [back] = load(path)

    assert back == record
    assert back.message.body == body and back.message.headers == dead.headers
    assert [type(v) for v in back.message.headers.values()] == [str, int, float, bool, str]
