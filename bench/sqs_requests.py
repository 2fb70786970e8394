"""AWS API requests per message on SNS/SQS, against a naive baseline in the same run.

Path: publish -> SNS topic -> SQS queue (raw delivery) -> worker -> delete, for N
messages on one subscribed queue, on a moto_server over HTTP (a separate process, so
moto's own CPU does not starve the worker's event loop as it does in process).
Requests are counted with a botocore `before-call` hook on the clients, one per API
call; SNS's own delivery into SQS is not a client request and is not counted.

- baseline: one call per operation: `Publish` per message, `ReceiveMessage` of one
  message, `DeleteMessage` per message.
- mailbag: `Broker.publish` in groups of ten (`PublishBatch`), a `Worker` (default
  prefetch, twice its concurrency) receiving ten at a time and acks batched into
  `DeleteMessageBatch`.

moto slows down as a queue gets deeper, so in both runs the publisher and the consumer
run together and the publisher stays at most WINDOW messages ahead (a shallow queue).
The last line printed is `requests_per_message=<x>` for mailbag. Target: <= 0.35.

    .venv/bin/python bench/sqs_requests.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import boto3

from mailbag.broker import Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.moto_server
from mailbag.broker.sqs import open_broker
from mailbag.workers import App, Worker
from tests.moto_server import MotoServer, dummy_aws_credentials

REGION = "eu-west-1"
TOPIC = "bench.orders"
QUEUE = "bench.orders.q"
BODY = b'{"order_id": "o-1", "amount_cents": 1250}'
WINDOW = 100
BATCH = 10


class Requests:
    """API calls made by some botocore clients, by operation."""

    def __init__(self) -> None:
        self.by_operation: Counter[str] = Counter()
        self._lock = threading.Lock()

    def watch(self, *clients) -> None:
        for client in clients:
            client.meta.events.register("before-call.*.*", self._count)

    def _count(self, model, **_) -> None:
        with self._lock:
            self.by_operation[model.name] += 1

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())


def baseline(endpoint: str, n: int) -> tuple[Requests, float]:
    """Plain boto3, one call per operation, publisher and consumer in two threads."""
    sns = boto3.client("sns", region_name=REGION, endpoint_url=endpoint)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    topic_arn = sns.create_topic(Name="baseline-orders")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="baseline-orders-q")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    requests = Requests()
    requests.watch(sns, sqs)
    room = threading.Semaphore(WINDOW)

    def publish() -> None:
        for _ in range(n):
            room.acquire()
            sns.publish(TopicArn=topic_arn, Message=BODY.decode())

    def consume() -> None:
        handled = 0
        while handled < n:
            for m in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get(
                "Messages", []
            ):
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
                handled += 1
                room.release()

    started = time.perf_counter()
    threads = [threading.Thread(target=publish), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return requests, time.perf_counter() - started


async def mailbag(endpoint: str, n: int) -> tuple[Requests, float]:
    broker = await open_broker(f"sqs://?region={REGION}&endpoint={endpoint}&prefix=bench-&wait=2")
    app = App("bench")
    done = asyncio.Event()
    room = asyncio.Semaphore(WINDOW)
    handled = [0]

    @app.handler(TOPIC, queue=QUEUE)
    async def handle(payload: dict) -> None:
        handled[0] += 1
        room.release()
        if handled[0] == n:
            done.set()

    worker = Worker(app, broker, concurrency=20, middleware=[])  # prefetch: the default, twice concurrency
    await worker.start()  # declares the topology: not counted
    requests = Requests()
    requests.watch(broker.aws.sns, broker.aws.sqs)

    async def publish() -> None:
        for _ in range(0, n, BATCH):
            for _ in range(BATCH):
                await room.acquire()
            await broker.publish(TOPIC, [Message(TOPIC, BODY) for _ in range(BATCH)])

    started = time.perf_counter()
    await asyncio.gather(publish(), done.wait())
    await worker.stop()  # sends the acks still lingering
    elapsed = time.perf_counter() - started
    await broker.close()
    return requests, elapsed


def show(name: str, requests: Requests, elapsed: float, n: int) -> None:
    ops = ", ".join(f"{op} {count}" for op, count in sorted(requests.by_operation.items()))
    print(f"{name:9} {requests.total:6d} requests  {requests.total / n:.3f}/message  {n / elapsed:7.0f} msg/s  ({ops})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    n = parser.parse_args().messages
    if n % BATCH:
        parser.error(f"--messages must be a multiple of {BATCH}")
    server = MotoServer()
    try:
        with dummy_aws_credentials():
            base, base_time = baseline(server.url, n)
            ours, our_time = asyncio.run(mailbag(server.url, n))
    finally:
        server.stop()
    print(f"{n} messages, one subscribed queue, moto_server, publisher at most {WINDOW} ahead")
    show("baseline", base, base_time, n)
    show("mailbag", ours, our_time, n)
    print(f"ratio (mailbag / baseline requests) = {ours.total / base.total:.3f}")
    print(f"requests_per_message={ours.total / n:.3f}")


if __name__ == "__main__":
    main()
