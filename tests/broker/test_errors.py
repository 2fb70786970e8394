"""Broker errors say what went wrong in a line a person can read."""

from mailbag.broker.errors import PublishFailed


def test_a_failed_publish_names_a_few_ids_and_keeps_them_all():
    ids = [f"m-{n}" for n in range(1000)]
    error = PublishFailed("not confirmed", ids)
    assert str(error) == "not confirmed: m-0, m-1, m-2, m-3, m-4 and 995 more"
    assert error.message_ids == ids
