"""The order flow as a runnable app: `mailbag worker examples.orders.app:app`."""

from examples.orders.choreography import Timeline, build_app

app = build_app(Timeline())
