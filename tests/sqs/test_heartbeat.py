"""A handler that runs longer than the visibility timeout keeps its message: the
consumer's heartbeat extends visibility, so no other consumer receives it mid-run."""

from mailbag.broker import Queue, Topology
from mailbag.broker.sqs import open_broker
from tests.conformance.env import eventually, next_delivery, nothing_within
from tests.moto_server import REGION
from tests.sqs.helpers import message


async def test_a_held_message_is_not_redelivered_past_the_visibility_timeout(aws, prefix, sqs):
    # Given queues with a 2 s visibility timeout, and two brokers (two services) on them
    url = f"sqs://?region={REGION}&prefix={prefix}&wait=1&visibility=2"
    worker, other = await open_broker(url), await open_broker(url)
    try:
        q = Queue("slow", ("jobs",))
        await worker.declare(Topology(queues=(q,)))
        queue_url = sqs.get_queue_url(QueueName=f"{prefix}slow")["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["VisibilityTimeout"])["Attributes"]
        assert attrs["VisibilityTimeout"] == "2"
        await worker.publish("jobs", [message("jobs")])

        async with worker.consume("slow") as busy, other.consume("slow") as idle:
            # When one worker holds the message for 2.5 visibility timeouts
            held = await next_delivery(busy)
            # Then the other never receives it while it runs
            assert await nothing_within(idle, 5.0), "redelivered while the handler still ran"
            # And once acked it is gone for good
            await held.ack()

            async def gone() -> bool:
                return (await other.stats("slow")).ready == 0 and (await other.stats("slow")).in_flight == 0

            await eventually(gone, what="the acked message to be deleted")
            assert await nothing_within(idle, 0.5)
        assert held.attempt == 1
    finally:
        await worker.close()
        await other.close()
