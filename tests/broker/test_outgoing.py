"""`outgoing`: the one function that builds every published message."""

import pytest
from pydantic import BaseModel

from mailbag.broker import headers as h
from mailbag.broker.errors import MailbagError, MessageTooLarge, PayloadRejected, PublishError, ReservedHeader
from mailbag.broker.outgoing import outgoing


class Order(BaseModel):
    order_id: str


def test_a_payload_becomes_a_message_with_its_fields():
    m = outgoing(
        "orders", Order(order_id="o-1"), key="o-1", headers={"tenant": "a"}, correlation_id="c", message_id="m"
    )
    assert (m.topic, m.body, m.content_type, m.type) == ("orders", b'{"order_id":"o-1"}', "application/json", "Order")
    assert (m.id, m.ordering_key, m.correlation_id, dict(m.headers)) == ("m", "o-1", "c", {"tenant": "a"})
    assert outgoing("orders", b"text", content_type="text/plain").content_type == "text/plain"


@pytest.mark.parametrize("name", ["x-mailbag-attempt", "X-MAILBAG-ORIGIN-QUEUE", "x-mailbag-anything"])
def test_a_reserved_header_is_refused_in_any_case(name):
    with pytest.raises(ReservedHeader, match=name) as refused:
        outgoing("orders", {}, headers={name: 1})
    assert isinstance(refused.value, (MailbagError, PublishError, ValueError))


@pytest.mark.parametrize("name", [*sorted(h.BROKER_OWNED), "tenant"])
def test_a_stamp_takes_only_mailbag_headers_the_broker_does_not_read(name):
    with pytest.raises(ReservedHeader, match=name):
        outgoing("orders", {}, stamp={name: 1})
    assert outgoing("orders", {}, stamp={"x-mailbag-saga": "s"}).headers == {"x-mailbag-saga": "s"}


def test_a_payload_that_does_not_fit_the_model_is_refused():
    with pytest.raises(PayloadRejected, match="order_id"):
        outgoing("orders", {"id": 1}, model=Order)


def test_a_message_over_the_size_the_broker_takes_is_refused_before_sending():
    assert outgoing("orders", b"x" * 100, max_size=100).body == b"x" * 100
    with pytest.raises(MessageTooLarge, match="at most 100"):
        outgoing("orders", b"x" * 90, headers={"tenant": "abcdefghijk"}, max_size=100)
