"""The AWS Lambda entry point: an SQS-triggered function runs an app's handlers on the
worker's own path (`Worker.process`: validation, idempotency, retry, circuit breaker,
timeout, the app's middleware) and answers with `batchItemFailures`, so only the
records that must come back are redelivered.

    # myservice/aws.py, function handler "myservice.aws.handler"
    from myservice.handlers import app
    from mailbag.workers.aws_lambda import handler_for

    handler = handler_for(app)

The event source mapping needs `ReportBatchItemFailures`. Settings come from the
`MAILBAG_*` environment like the worker's: `MAILBAG_BROKER_URL` must be `sqs://` (with
the `prefix` the queues were deployed with) and `MAILBAG_IDEMPOTENCY_URL` must name a
store every instance shares, e.g. `dynamodb://TABLE`. The topology is not declared
here: it is deployed, and the function's role need not create anything.

Each record is settled as the worker's SQS consumer settles it:

- handled, or a duplicate already handled -> not reported: Lambda deletes it;
- `RetryLater` -> reported, and hidden for the backoff delay (ChangeMessageVisibility),
  so SQS brings it back then with `ApproximateReceiveCount` + 1; at the queue's max
  attempts (its redrive `maxReceiveCount`) it is dead-lettered instead;
- an invalid payload, `Reject`, a non-retryable error, the last attempt -> sent to the
  queue's DLQ with the `x-mailbag-` dead-letter headers, then not reported, so Lambda
  deletes the original; if that send fails it is reported and comes back;
- `Postpone` -> a copy goes back to the queue with the delay and no attempt used;
- the invocation crashing or timing out -> SQS redelivers the whole batch, and its
  redrive policy moves a message to the DLQ (without a reason) after maxReceiveCount.

When every record of a batch is reported, the invocation raises `BatchFailed` instead
of answering (`raise_on_entire_batch_failure=True`, the default): Lambda then counts an
error and backs off polling, where an answer listing every record reads as success and
it polls on at full speed into whatever is failing. Each record is hidden for its
retry delay first, as when it is reported. With False, the answer lists them all.

FIFO queues (the event source ARN ends in `.fifo`): a message group's records run one
at a time, in order; at the first failure the rest of that group is not run and is
reported too (visible again at once, behind the failed record, which keeps the group
locked in SQS until it returns). Different groups run in parallel, at most
`concurrency` handlers at once, as in the worker. `fifo="batch"` is AWS's own rule
instead: the batch runs one record at a time, in order, and at the first failure
that record and every later record of the batch are reported, whatever their group.

A Lambda invocation dies at its timeout (or out of memory) without releasing what it
held: the idempotency lease a record's run takes ends with the invocation (its
remaining time plus a small slack, see `mailbag.workers.middleware.idempotency`), so
the record's next delivery runs it instead of waiting out the store's lease.

One event loop is kept across warm invocations (made on the first): the broker's SQS
client and queue lookups and the idempotency store's connections belong to it, so a
warm function reuses them instead of reconnecting on every batch. Records still
running when less than `margin` seconds of the invocation remain are cancelled and
reported, so the function answers before Lambda stops it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from mailbag.broker import Broker, BrokerError, Delivery, Message, Queue, connect
from mailbag.broker import headers as h
from mailbag.broker.errors import MailbagError
from mailbag.broker.sqs.mapping import MAX_DELAY_SECONDS, MAX_VISIBILITY, SQS_MAX_BYTES, aws_name
from mailbag.broker.sqs.marshal import (
    attempts_used,
    dead_letter_copy,
    from_lambda_record,
    uncount,
    with_attempts_used,
)
from mailbag.broker.url import mask_url, query_options, scheme_of
from mailbag.workers.app import App
from mailbag.workers.logs import filter_root_handlers
from mailbag.workers.middleware.idempotency import run_ends_by
from mailbag.workers.runtime import Worker
from mailbag.workers.settings import WorkerSettings

log = logging.getLogger("mailbag.lambda")

#: on a FIFO queue, what a failure stops: the rest of its message group, or the rest of the batch
FifoMode = Literal["group", "batch"]


class BatchFailed(MailbagError):
    """Every record of the batch failed: raised so that Lambda counts an error and backs
    off polling. SQS delivers each record again when its visibility timeout ends."""

    def __init__(self, message_ids: list[str]) -> None:
        shown = ", ".join(message_ids[:10]) + (", ..." if len(message_ids) > 10 else "")
        super().__init__(f"all {len(message_ids)} record(s) of the batch failed and come back: {shown}")
        self.message_ids = message_ids


def handler_for(
    app: App,
    *,
    settings: WorkerSettings | None = None,
    margin: float = 1.0,
    raise_on_entire_batch_failure: bool = True,
    fifo: FifoMode = "group",
) -> LambdaHandler:
    """The Lambda handler for `app`; settings default to the `MAILBAG_*` environment.
    A wrong setting raises here, at import of the function's module, not at the first
    batch."""
    return LambdaHandler(
        app,
        settings or WorkerSettings(),
        margin,
        raise_on_entire_batch_failure=raise_on_entire_batch_failure,
        fifo=fifo,
    )


class LambdaHandler:
    """`handler(event, context)` -> `{"batchItemFailures": [{"itemIdentifier": id}, ...]}`.
    Connections open on the first invocation; `close()` ends them (tests, shutdown)."""

    def __init__(
        self,
        app: App,
        settings: WorkerSettings,
        margin: float,
        *,
        raise_on_entire_batch_failure: bool = True,
        fifo: FifoMode = "group",
    ) -> None:
        if scheme_of(settings.broker_url) != "sqs":
            raise ValueError(
                f"the Lambda entry point consumes SQS: MAILBAG_BROKER_URL must be sqs://..., "
                f"got {mask_url(settings.broker_url)!r}"
            )
        if settings.idempotency_url is None and any(hd.idempotency is not False for hd in app.handlers.values()):
            raise ValueError(
                "set MAILBAG_IDEMPOTENCY_URL to a store every function instance shares (e.g. dynamodb://TABLE); "
                "the default SQLite file is neither writable nor shared on Lambda"
            )
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if fifo not in ("group", "batch"):
            raise ValueError(f"fifo must be 'group' or 'batch', got {fifo!r}")
        self.app = app
        self.settings = settings
        self.margin = margin
        self.raise_on_entire_batch_failure = raise_on_entire_batch_failure
        self.fifo = fifo
        prefix = query_options(settings.broker_url).get("prefix", "")
        #: SQS queue name -> the app's queue it carries
        self.queues = {aws_name(prefix, q.name, q.ordered): q for q in app.topology.queues}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        #: SQS message id -> receives that ran no handler (FIFO postpones, records held
        #: back behind a failure of their group): not attempts. Kept while warm.
        self.uncounted: dict[str, int] = {}
        logging.getLogger("mailbag").setLevel(settings.log_level)
        filter_root_handlers()

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.handle(event, context))

    def close(self) -> None:
        """Close the store, the broker and the event loop. Idempotent."""
        if self._loop is None:
            return
        self._loop.run_until_complete(self._close())
        self._loop.close()
        self._loop = None

    async def _close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()
            await worker.broker.close()

    async def _ready(self) -> Worker:
        if self._worker is None:
            broker = await connect(self.settings.broker_url)
            worker = Worker(self.app, broker, settings=self.settings)
            try:
                await worker.prepare()
            except BaseException:
                await broker.close()
                raise
            self._worker = worker
        return self._worker

    async def handle(self, event: Mapping[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        """One batch: run every record, settle what can be settled, report the rest."""
        records = event.get("Records")
        if not isinstance(records, list):
            raise ValueError("not an SQS event: it has no Records list")
        specs = [self._queue_of(r) for r in records]
        remaining = self._remaining(context)
        if remaining is not None:
            run_ends_by.set(time.monotonic() + remaining)  # the runs below cannot outlive the invocation
        worker = await self._ready()
        deliveries = [_LambdaDelivery(r, spec, worker.broker, self.uncounted) for r, spec in zip(records, specs)]
        slots = asyncio.Semaphore(worker.concurrency)

        async def run(lane: list[_LambdaDelivery]) -> None:
            for delivery in lane:
                async with slots:
                    if delivery.undecodable is None:
                        await worker.process(delivery)
                    else:
                        await delivery.park_undecodable()
                if delivery.failed:
                    for unrun in lane[lane.index(delivery) + 1 :]:
                        uncount(self.uncounted, unrun.record["messageId"])  # held back, never run
                    return  # on a FIFO queue the rest of the group waits behind it

        tasks = [asyncio.create_task(run(lane)) for lane in _lanes(deliveries, self.fifo)]
        if tasks:
            time_left = None if remaining is None else max(0.0, remaining - self.margin)
            _, late = await asyncio.wait(tasks, timeout=time_left)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if late:
                unfinished = sum(d.settled is None for d in deliveries)
                log.warning("invocation running out of time: %d unfinished record(s) go back", unfinished)
        failed = [d for d in deliveries if d.failed]
        await self._hide(worker.broker, failed)
        failed_ids = [d.record["messageId"] for d in failed]
        if failed and len(failed) == len(deliveries) and self.raise_on_entire_batch_failure:
            raise BatchFailed(failed_ids)
        return {"batchItemFailures": [{"itemIdentifier": i} for i in failed_ids]}

    def _queue_of(self, record: Mapping[str, Any]) -> Queue:
        arn = record.get("eventSourceARN", "")
        if record.get("eventSource") != "aws:sqs" or not arn:
            raise ValueError(f"not an SQS record: eventSource {record.get('eventSource')!r}")
        name = arn.rsplit(":", 1)[-1]
        spec = self.queues.get(name)
        if spec is None:
            raise ValueError(
                f"SQS queue {name!r} carries none of app {self.app.name!r}'s queues "
                f"({', '.join(sorted(self.queues))}); is the broker URL's prefix the one it was deployed with?"
            )
        return spec

    @staticmethod
    def _remaining(context: Any) -> float | None:
        """Seconds until Lambda stops the invocation (None: no context to ask)."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        return None if remaining is None else max(0.0, remaining() / 1000)

    async def _hide(self, broker: Broker, failed: list[_LambdaDelivery]) -> None:
        """Set each reported record's visibility timeout: the retry delay, or 0 for one
        that never ran. A failed change only means the record returns after the
        queue's own visibility timeout."""
        by_queue: dict[str, dict[str, int]] = {}
        for d in failed:
            if d.visibility is not None:
                by_queue.setdefault(d.spec.name, {})[d.record["receiptHandle"]] = d.visibility
        for queue, receipts in by_queue.items():
            try:
                await broker.hide(queue, receipts)  # type: ignore[attr-defined]  # the SNS/SQS adapter's
            except BrokerError as exc:
                log.warning("changing the visibility of %d record(s) failed: %s", len(receipts), exc)


class _LambdaDelivery(Delivery):
    """One record of the batch. Settling records the outcome for the batch response:
    `failed` until acked or dead-lettered; `visibility` is how long a reported record
    stays hidden (None: leave it to the queue). `undecodable` is why a record could
    not be read as a message (its message is then the raw body)."""

    __slots__ = ("broker", "failed", "group", "record", "spec", "uncounted", "undecodable", "visibility")

    def __init__(self, record: Mapping[str, Any], spec: Queue, broker: Broker, uncounted: dict[str, int]) -> None:
        attributes = record.get("attributes", {})
        default_topic = spec.topics[0] if len(spec.topics) == 1 else spec.name
        self.undecodable: Exception | None = None
        used = 0
        try:
            message, used = attempts_used(from_lambda_record(record, default_topic))
        except (ValueError, KeyError, TypeError) as exc:
            self.undecodable = exc
            message = Message(default_topic, str(record.get("body", "")).encode(), id=str(record.get("messageId")))
        receives = int(attributes.get("ApproximateReceiveCount", 1))
        attempt = max(1, receives + used - uncounted.get(str(record.get("messageId")), 0))
        super().__init__(message, spec.name, attempt)
        self.uncounted = uncounted
        self.record = record
        self.group: str | None = attributes.get("MessageGroupId")
        self.spec = spec
        self.broker = broker
        self.failed = True
        self.visibility: int | None = 0

    async def park_undecodable(self) -> None:
        """Dead-letter a record that is no message of ours, as it came, with the reason
        (as the worker's SQS consumer does); if that fails it is reported and comes back."""
        try:
            await self.dead_letter(f"undecodable SQS message: {self.undecodable}", self.undecodable)
        except Exception as exc:
            log.error("settling failed", extra={"message_id": self.message.id, "queue": self.queue, "error": repr(exc)})
            await self.release()

    async def _ack(self) -> None:
        self.failed = False
        self.uncounted.pop(self.record["messageId"], None)

    async def _retry(self, delay: float) -> None:
        if self.attempt >= self.spec.retry.max_attempts:
            await self._dead_letter(h.DELIVERY_LIMIT_EXCEEDED, None)
            return
        self.visibility = min(MAX_VISIBILITY, math.ceil(delay))

    async def _postpone(self, delay: float) -> None:
        """Standard queue: a delayed copy carrying the attempts used, and the record is
        deleted. FIFO (no per-message delay), or past SQS's 900 s: the record is
        reported, hidden for the delay, and this receive is not counted as an attempt."""
        seconds = math.ceil(delay)
        if self.spec.ordered or seconds > MAX_DELAY_SECONDS:
            uncount(self.uncounted, self.record["messageId"])
            self.visibility = min(MAX_VISIBILITY, seconds)
            return
        await self.broker.send(self.queue, [with_attempts_used(self.message, self.attempt - 1)], delay=seconds)
        self.failed = False

    async def _dead_letter(self, reason: str, error: BaseException | None) -> None:
        message = self.message
        dead = dead_letter_copy(message, self.queue, self.attempt, reason, error, SQS_MAX_BYTES)
        await self.broker.send(self.spec.dead_letter_queue, [dead])
        self.failed = False
        self.uncounted.pop(self.record["messageId"], None)

    async def _release(self, delay: float) -> None:
        """Reported, and visible again after `delay` (whole seconds)."""
        self.failed = True
        self.visibility = min(MAX_VISIBILITY, math.ceil(delay))


def _lanes(deliveries: Iterable[_LambdaDelivery], fifo: FifoMode) -> list[list[_LambdaDelivery]]:
    """Records that must run one after another, in batch order: a FIFO message group
    (`fifo="group"`) or a FIFO queue's whole batch (`fifo="batch"`); every other record
    runs on its own."""
    lanes: dict[Any, list[_LambdaDelivery]] = {}
    for i, d in enumerate(deliveries):
        fifo_lane = d.record["eventSourceARN"] if fifo == "batch" else (d.record["eventSourceARN"], d.group)
        key = fifo_lane if d.spec.ordered else i
        lanes.setdefault(key, []).append(d)
    return list(lanes.values())
