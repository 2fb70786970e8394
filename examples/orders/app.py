"""The order flow as runnable apps:

mailbag worker mailbag.examples.orders.app:app            # choreography, all four services
mailbag worker mailbag.examples.orders.app:participants   # the services as saga participants
python -m mailbag.examples.orders.orchestrator            # the saga orchestrator
"""

from mailbag.examples.orders.choreography import build_app
from mailbag.examples.orders.saga import build_participants, order_saga
from mailbag.examples.orders.services import Shop

app = build_app(Shop())
participants = build_participants(Shop(), order_saga())
