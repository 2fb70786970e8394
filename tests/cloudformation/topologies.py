"""Topologies the CloudFormation tests export: one with every feature the mapping has,
and the same fit for Lambda triggers."""

from dataclasses import replace

from mailbag.broker import Queue, RetryPolicy, Subscription, Topology


def everything() -> Topology:
    """FIFO and standard queues, filters (one numeric-looking), a queue on two topics,
    a named dead-letter queue, a topic nobody consumes, and dots in names."""
    return Topology(
        queues=(
            Queue(
                "ledger.v1",
                (Subscription("payments", {"currency": ("EUR", "USD"), "priority": ("5",)}),),
                ordered=True,
                retry=RetryPolicy(max_attempts=3),
            ),
            Queue("audit", ("payments", "orders.created"), retry=RetryPolicy(max_attempts=7)),
            Queue("eu.orders", (Subscription("orders.created", {"region": ("eu",)}),), dead_letter_queue="eu-parked"),
        ),
        topics=("announcements",),
    )


def lambda_ready() -> Topology:
    """`everything()` with every queue retried at least 5 times, as a Lambda trigger needs."""
    return Topology(
        queues=tuple(
            replace(q, retry=RetryPolicy(max_attempts=max(5, q.retry.max_attempts))) for q in everything().queues
        ),
        topics=everything().topics,
    )
