"""The RabbitMQ adapter on aio-pika: `adapter` (the `Broker`), `marshal` (a `Message` as
AMQP properties and back) and `topology` (exchanges, queues, retry and dead-letter
plumbing). Everything RabbitMQ-specific lives in this package."""

from mailbag.broker.rabbitmq.adapter import RabbitBroker, open_broker

__all__ = ["RabbitBroker", "open_broker"]
