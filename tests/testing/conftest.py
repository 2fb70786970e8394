"""Fixtures for the `mailbag.testing` tests: moto over HTTP for the real-time SQS case
(the `mailbag_*` fixtures come from the plugin itself, through its entry point)."""

from tests.moto_server import moto_server  # noqa: F401  (re-exported fixture)
