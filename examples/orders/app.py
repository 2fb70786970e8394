"""The order flow as runnable apps:

    mailbag worker examples.orders.app:app            # choreography, all four services
    mailbag worker examples.orders.app:participants   # the services as saga participants
    python -m examples.orders.orchestrator            # the saga orchestrator
"""

from examples.orders.choreography import build_app
from examples.orders.saga import build_participants, order_saga
from examples.orders.services import Shop

app = build_app(Shop())
participants = build_participants(Shop(), order_saga())
