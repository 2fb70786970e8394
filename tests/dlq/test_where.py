"""`--where`: the filter matches on a record's fields and runs nothing else."""

import pytest

from mailbag.broker import Message
from mailbag.broker import headers as h
from mailbag.dlq import DeadLetter, Where, WhereError

RECORD = DeadLetter.from_message(
    Message(
        "orders.placed",
        b'{"order": 7}',
        headers={
            "tenant": "acme",
            **h.dead_letter_stamp("orders.placed", "q", 3, "failed after 3", TimeoutError("slow")),
        },
    ),
    "q.dlq",
)


@pytest.mark.parametrize(
    "expression, matches",
    [
        ("attempts >= 3", True),
        ('error_type == "TimeoutError" and headers["tenant"] == "acme"', True),
        ('reason.startswith("failed") and "order" in body', True),
        ('topic in ("orders.placed", "orders.paid") and not attempts > 3', True),
        ('last_failed_at > "2000-01-01"', True),
        ('headers["region"] == "eu"', False),  # a missing header does not match, it does not fail
        ("correlation_id > 1", False),  # None compared: no match
    ],
)
def test_matches_on_the_records_fields(expression, matches):
    assert Where(expression)(RECORD) is matches


@pytest.mark.parametrize(
    "expression, says",
    [
        ("attempts >", "not a valid expression"),
        ("tries > 3", "unknown name 'tries'"),
        ('__import__("os").system("true")', "unknown name '__import__'"),
        ('open("/etc/passwd")', "unknown name 'open'"),
        ("reason.__class__", "__class__"),
        ("(lambda: 1)()", "Lambda"),
        ("9 ** 9 ** 9 ** 9", "9"),
    ],
)
def test_anything_beyond_a_filter_is_refused_before_a_message_is_touched(expression, says):
    with pytest.raises(WhereError, match="--where") as raised:
        Where(expression)
    assert says in str(raised.value)
