"""Broker errors say what went wrong in a line a person can read."""

from mailbag.broker.errors import PublishFailed


def test_a_failed_publish_names_a_few_ids_and_keeps_them_all():
    ids = [f"m-{n}" for n in range(1000)]
    error = PublishFailed("not confirmed", ids)
    assert str(error) == "not confirmed: m-0, m-1, m-2, m-3, m-4 and 995 more"
    assert error.message_ids == ids


def _mailbag_modules():
    import importlib
    import pkgutil

    # the subpackages install from folders of their own, so each is walked from its root
    for root in (
        "mailbag",
        "mailbag.broker",
        "mailbag.workers",
        "mailbag.publishers",
        "mailbag.dlq",
        "mailbag.harness",
    ):
        package = importlib.import_module(root)
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{root}."):
            if info.name != "mailbag.cli.__main__":  # the entry script runs the CLI
                yield importlib.import_module(info.name)


def test_every_error_mailbag_raises_derives_from_mailbag_error():
    from mailbag import MailbagError
    from mailbag.workers.errors import Postpone, Reject, RetryLater

    handler_outcomes = {Reject, RetryLater, Postpone}  # raised BY handlers, to choose an outcome
    errors = {
        value
        for module in _mailbag_modules()
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__.startswith("mailbag.")
    }
    assert len(errors) > 20
    outside = sorted(e.__qualname__ for e in errors - handler_outcomes if not issubclass(e, MailbagError))
    assert outside == []
