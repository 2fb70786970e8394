"""The SNS/SQS adapter (`sqs://`), on boto3.

URL: `sqs://?region=eu-west-1&endpoint=http://127.0.0.1:5055&prefix=dev-` plus optional
`wait` (long-poll seconds, 0-20, default 20), `visibility` (queue visibility timeout in
seconds, default 30), `threads` (boto3 call pool, default 32) and `linger` (seconds an
ack waits to share a `DeleteMessageBatch`, and a consumer waits before its next receive
after a short one, default 0.2; 0 favours latency over request count). Credentials come from the
standard AWS chain, never from the URL.

Publishing goes through `PublishBatch` (topics) and `SendMessageBatch` (queues) in
groups of ten. Consumers long-poll ten at a time, extend visibility while a handler
still runs (a heartbeat every third of the timeout) and batch their deletes.

Attempts count handler runs: SQS's `ApproximateReceiveCount`, plus the attempts a
postponed copy carries (`x-mailbag-attempts-used`), less the receives this consumer
knows ran no handler (a FIFO postpone, followers returned behind a retried message of
their group). `retry(delay)` hides the message for `ceil(delay)` seconds; `postpone`
sends a delayed copy (standard) or hides it (FIFO, which takes no per-message delay).
A message received more often than its queue's max attempts is dead-lettered unrun
with `DELIVERY_LIMIT_EXCEEDED`; the redrive policy's maxReceiveCount has headroom
above max attempts (`REDRIVE_HEADROOM`), so SQS moves a message without a reason only
when no mailbag consumer could. See docs/sqs.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_exponential

from mailbag.broker import headers as h
from mailbag.broker.backoff import RETURNS
from mailbag.broker.base import Broker, Consumer, QueueStats
from mailbag.broker.errors import (
    BrokerClosed,
    BrokerError,
    BrokerUnavailable,
    BrokerUrlError,
    DeliveryReleased,
    MessageTooLarge,
    PublishFailed,
    TopologyError,
)
from mailbag.broker.message import Delivery, Message, new_message_id
from mailbag.broker.sqs.client import AwsClients
from mailbag.broker.sqs.mapping import MAX_DELAY_SECONDS, MAX_VISIBILITY, SQS_MAX_BYTES, policy_matches
from mailbag.broker.sqs.marshal import (
    attempts_used,
    dead_letter_copy,
    from_wire,
    to_wire,
    uncount,
    with_attempts_used,
)
from mailbag.broker.sqs.topology import ROUTES_TTL, QueueRef, Resources, TopicRef
from mailbag.broker.topology import Topology
from mailbag.broker.url import mask_url, query_options

log = logging.getLogger("mailbag.broker.sqs")

BATCH = 10
#: largest message (body plus attributes) an SNS topic takes
SNS_MAX_BYTES = 262_144
SEND_ATTEMPTS = 3

_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"]
#: seconds a topic seen without a taker is trusted before its subscriptions are listed again
RELIST_UNROUTED = 1.0
_TOKEN = re.compile(r"^[!-~]{1,128}$")


class SqsBroker(Broker):
    #: SNS takes no more per message (body plus attributes), and SQS's own limit is no lower
    max_message_size = SNS_MAX_BYTES

    def __init__(self, url: str, aws: AwsClients, resources: Resources, *, wait: int, linger: float) -> None:
        self.url = url
        self.aws = aws
        self.wait = wait
        self.linger = linger
        self._resources = resources
        self._consumers: set[_SqsConsumer] = set()
        #: receives in flight, with the consumer each is for
        self._polls: dict[asyncio.Task[None], _SqsConsumer] = {}
        self._closed = False

    # -- contract -------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        self._check_open()
        await self._resources.declare(topology)

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        """SNS accepts what no subscription takes and drops it silently, so the topic's
        subscriptions and filter policies are checked here (listed again at most every
        `ROUTES_TTL` seconds, and at once before a message is called unroutable)."""
        self._check_open()
        for m in messages:
            if m.topic != topic:
                raise ValueError(f"message {m.id} is for topic {m.topic!r}, not {topic!r}")
        ref = await self._resources.topic(topic)
        entries = [_entry(m, "Message", SNS_MAX_BYTES, f"SNS topic {topic!r}", ref.fifo, m.id) for m in messages]
        unrouted = await self._unrouted(ref, messages, mandatory)
        if unrouted and mandatory:
            entries = [e for e in entries if e.message_id not in unrouted]
        await self._send_batches(
            self.aws.sns.publish_batch,
            {"TopicArn": ref.arn},
            "PublishBatchRequestEntries",
            entries,
            SNS_MAX_BYTES,
            ordered=ref.fifo,
        )
        self.unrouted.note(topic, [m.id for m in messages if m.id in unrouted], mandatory=mandatory)

    async def _unrouted(self, ref: TopicRef, messages: Sequence[Message], mandatory: bool) -> set[str]:
        """Ids of the messages no subscription of the topic takes. Subscriptions are
        listed again before a message is called unroutable: at once when mandatory,
        else when what is known is older than `RELIST_UNROUTED` seconds."""
        missed: set[str] = set()
        for max_age in (ROUTES_TTL, 0.0 if mandatory else RELIST_UNROUTED):
            policies = await self._resources.routes(ref, max_age=max_age)
            missed = {m.id for m in messages if not any(policy_matches(p, m.headers) for p in policies)}
            if not missed:
                break
        return missed

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        """`delay` becomes SQS `DelaySeconds`, rounded up: at most 900 s, and only on
        standard queues (FIFO queues take no per-message delay); beyond that it raises."""
        self._check_open()
        ref = await self._resources.queue(queue)
        seconds = math.ceil(delay)
        if seconds and ref.fifo:
            raise BrokerError(f"SQS FIFO queue {queue!r} takes no per-message delay (asked for {delay}s)")
        if seconds > MAX_DELAY_SECONDS:
            raise BrokerError(f"SQS delays a message at most {MAX_DELAY_SECONDS}s; asked for {delay}s on {queue!r}")
        await self._send_to(ref, messages, seconds)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        """The queue is looked up on the first `__anext__`, which raises `UnknownQueue`
        if it does not exist."""
        self._check_open()
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        consumer = _SqsConsumer(self, queue, prefetch)
        self._consumers.add(consumer)
        return consumer

    async def stats(self, queue: str) -> QueueStats:
        """SQS counts are approximate; a message waiting out a retry delay is invisible,
        so it counts as in flight and `delayed` is None."""
        ref = await self._resources.queue(queue)
        counts = await self._counts(ref)
        dead = sum(await self._counts(ref.dead_letter)) if ref.dead_letter else 0
        return QueueStats(queue, counts[0], counts[1], None, dead)

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        """SQS cannot peek: the messages are received, hidden while browsing and made
        visible again, so each browse counts as one receive towards maxReceiveCount."""
        ref = await self._resources.queue(queue)
        raw = await self._sweep(ref, limit)
        await self._change_visibility(ref, [m["ReceiptHandle"] for m in raw], 0)
        raw.sort(key=lambda m: int(m["Attributes"].get("SentTimestamp", 0)))  # stable: FIFO receive order kept
        return [from_wire(m, _default_topic(ref)) for m in raw]

    async def purge(self, queue: str) -> int:
        """Receives and deletes what is ready. (`PurgeQueue` would also drop messages in
        flight, takes up to a minute and is allowed once a minute.)"""
        ref = await self._resources.queue(queue)
        raw = await self._sweep(ref, math.inf)
        receipts = [m["ReceiptHandle"] for m in raw]
        for chunk in _chunks(receipts, BATCH):
            await self.aws.call(
                self.aws.sqs.delete_message_batch,
                QueueUrl=ref.url,
                Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)],
            )
        return len(raw)

    async def remove(self, topology: Topology) -> None:
        """A closed consumer's receive still in flight on a removed queue (its last long
        poll) is abandoned first: what it gets goes with the queue, and nothing touches
        the queue once it is gone."""
        self._check_open()
        names = {name for spec in topology.queues for name in (spec.name, spec.dead_letter_queue)}
        polls = [poll for poll, consumer in self._polls.items() if consumer.closed and consumer.queue in names]
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        await self._resources.remove(topology)

    async def queue_names(self) -> list[str]:
        """Every queue under the broker's prefix (the whole account and region without one)."""
        return await self._resources.queue_names()

    async def close(self) -> None:
        """Gives running long polls `CLOSE_WAIT` seconds to end, so that what they
        receive goes back to the queue at once, then abandons them: a stopping worker
        does not wait out a 20 s poll, and what an abandoned poll receives comes back
        when its visibility timeout runs out."""
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        if self._polls:
            _, running = await asyncio.wait(set(self._polls), timeout=CLOSE_WAIT)
            for poll in running:
                poll.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        await asyncio.to_thread(self.aws.close)

    # -- sending --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed(f"broker {self.url} is closed")

    async def _send_to(self, ref: QueueRef, messages: Sequence[Message], delay_seconds: int = 0) -> None:
        """Send straight to a queue. On FIFO queues each send gets a fresh deduplication
        id: the message id was already seen there, and a replay must not be dropped."""
        entries = [
            _entry(m, "MessageBody", SQS_MAX_BYTES, f"SQS queue {ref.name!r}", ref.fifo, new_message_id())
            for m in messages
        ]
        if delay_seconds:
            for e in entries:
                e.params["DelaySeconds"] = delay_seconds
        await self._send_batches(
            self.aws.sqs.send_message_batch, {"QueueUrl": ref.url}, "Entries", entries, SQS_MAX_BYTES, ordered=ref.fifo
        )

    async def _send_batches(
        self,
        method: Callable[..., Any],
        target: dict[str, str],
        key: str,
        entries: list[_Entry],
        max_bytes: int,
        *,
        ordered: bool,
    ) -> None:
        """Send in batches of ten (and at most `max_bytes` together). FIFO batches go one
        after another to keep the publisher's order. Other batches go at once, except
        that a batch waits for the earlier ones holding messages of its ordering keys:
        one call keeps each key's order as far as the queue does (SQS standard queues
        promise no order, but sending a key's batches at once reorders them for sure)."""
        batches = list(_batches(entries, max_bytes))
        if ordered:
            results = [await self._send_batch(method, target, key, b) for b in batches]
        else:
            last_of_key: dict[str, asyncio.Future[dict[str, str]]] = {}
            sends: list[asyncio.Future[dict[str, str]]] = []
            for batch in batches:
                keys = {e.key for e in batch if e.key is not None}
                before = {last_of_key[k] for k in keys if k in last_of_key}
                send = asyncio.ensure_future(self._send_after(before, method, target, key, batch))
                sends.append(send)
                last_of_key.update(dict.fromkeys(keys, send))
            results = await asyncio.gather(*sends)
        failed = {mid: why for result in results for mid, why in result.items()}
        if failed:
            reasons = sorted(set(failed.values()))
            raise PublishFailed(f"{len(failed)} message(s) not accepted ({'; '.join(reasons)})", list(failed))

    async def _send_after(
        self,
        before: set[asyncio.Future[dict[str, str]]],
        method: Callable[..., Any],
        target: dict[str, str],
        key: str,
        batch: list[_Entry],
    ) -> dict[str, str]:
        if before:
            await asyncio.wait(before)
        return await self._send_batch(method, target, key, batch)

    async def _send_batch(
        self, method: Callable[..., Any], target: dict[str, str], key: str, batch: list[_Entry]
    ) -> dict[str, str]:
        """Send one batch, retrying entries AWS failed on its side; returns the message
        ids it never accepted, with the reason."""
        left = dict(enumerate(batch))
        refused: dict[str, str] = {}

        async def attempt() -> dict[int, _Entry]:
            try:
                result = await self.aws.call(
                    method, **target, **{key: [{**e.params, "Id": str(i)} for i, e in left.items()]}
                )
            except BrokerError as exc:
                for e in left.values():
                    refused[e.message_id] = str(exc)
                return {}
            for failure in result.get("Failed", []):
                entry = left[int(failure["Id"])]
                refused[entry.message_id] = f"{failure.get('Code')}: {failure.get('Message', '')}".strip()
                if failure.get("SenderFault"):
                    del left[int(failure["Id"])]
            failed_ids = {int(f["Id"]) for f in result.get("Failed", [])}
            for i in [i for i in left if i not in failed_ids]:
                refused.pop(left.pop(i).message_id, None)
            return left

        retrying = AsyncRetrying(
            retry=retry_if_result(bool),
            stop=stop_after_attempt(SEND_ATTEMPTS),
            wait=wait_exponential(multiplier=0.1, max=2),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        await retrying(attempt)
        return refused

    # -- receiving ------------------------------------------------------------

    async def _receive(self, ref: QueueRef, count: int, wait: int, visibility: int | None = None) -> list[dict]:
        params: dict[str, Any] = {
            "QueueUrl": ref.url,
            "MaxNumberOfMessages": count,
            "WaitTimeSeconds": wait,
            "MessageAttributeNames": ["All"],
            "MessageSystemAttributeNames": _SYSTEM_ATTRIBUTES,
        }
        if visibility is not None:
            params["VisibilityTimeout"] = visibility
        call = self.aws.poll if wait else self.aws.call
        return (await call(self.aws.sqs.receive_message, **params)).get("Messages", [])

    async def _sweep(self, ref: QueueRef, limit: float) -> list[dict]:
        """Receive up to `limit` ready messages, holding each for the visibility timeout;
        stops at the first empty receive (a one-second long poll, which unlike a short
        poll asks every SQS server)."""
        got: dict[str, dict] = {}
        while len(got) < limit:
            batch = await self._receive(ref, int(min(BATCH, limit - len(got))), min(self.wait, 1))
            if not batch:
                break
            got.update((m["MessageId"], m) for m in batch)
        return list(got.values())

    async def hide(self, queue: str, receipts: Mapping[str, int]) -> None:
        """Keep messages of `queue` that were received elsewhere (a Lambda SQS trigger
        hands over receipt handles) hidden for the given whole seconds each, 0 to show
        them at once: how such a host times a retry. Best effort, like every visibility
        change: a receipt that fails keeps the queue's own timeout."""
        ref = await self._resources.queue(queue)
        by_seconds: dict[int, list[str]] = {}
        for receipt, seconds in receipts.items():
            by_seconds.setdefault(seconds, []).append(receipt)
        for seconds, same in by_seconds.items():
            await self._change_visibility(ref, same, seconds)

    async def _change_visibility(self, ref: QueueRef, receipts: list[str], seconds: int) -> None:
        """Best effort: a receipt that fails here just keeps its old timeout."""
        for chunk in _chunks(receipts, BATCH):
            entries = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": seconds} for i, r in enumerate(chunk)]
            try:
                result = await self.aws.call(
                    self.aws.sqs.change_message_visibility_batch, QueueUrl=ref.url, Entries=entries
                )
            except BrokerError as exc:
                log.warning("changing visibility on %s failed: %s", ref.name, exc)
                continue
            for failure in result.get("Failed", []):
                log.debug("changing visibility on %s failed: %s", ref.name, failure)

    async def _counts(self, ref: QueueRef) -> tuple[int, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        result = await self.aws.call(self.aws.sqs.get_queue_attributes, QueueUrl=ref.url, AttributeNames=names)
        attrs = result.get("Attributes", {})
        return int(attrs.get(names[0], 0)), int(attrs.get(names[1], 0))


class _Entry:
    __slots__ = ("key", "message_id", "params", "size")

    def __init__(self, message_id: str, size: int, params: dict[str, Any], key: str | None) -> None:
        self.message_id = message_id
        self.size = size
        self.params = params
        #: the ordering key: batches sharing one are sent one after another
        self.key = key


def _entry(message: Message, body_key: str, limit: int, where: str, fifo: bool, dedup_id: str) -> _Entry:
    wire = to_wire(message)
    if wire.size > limit:
        raise MessageTooLarge(
            f"message {message.id} is {wire.size} bytes (body plus attributes); {where} takes at most {limit}"
        )
    params: dict[str, Any] = {body_key: wire.body, "MessageAttributes": wire.attributes}
    if fifo:
        params["MessageGroupId"] = _token(message.ordering_key or message.id)
        params["MessageDeduplicationId"] = _token(dedup_id)
    return _Entry(message.id, wire.size, params, message.ordering_key)


def _token(value: str) -> str:
    """A group or deduplication id as SQS takes it: the value itself when it is 1-128
    printable ASCII characters, else a digest of it."""
    if _TOKEN.match(value):
        return value
    return "sha256-" + hashlib.sha256(value.encode()).hexdigest()


def _batches(entries: list[_Entry], max_bytes: int) -> Iterable[list[_Entry]]:
    batch: list[_Entry] = []
    size = 0
    for e in entries:
        if batch and (len(batch) == BATCH or size + e.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(e)
        size += e.size
    if batch:
        yield batch


def _chunks(items: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _default_topic(ref: QueueRef) -> str:
    """The topic of a message whose publisher did not say: the queue's only topic, or
    else the queue's name."""
    return ref.topics[0] if len(ref.topics) == 1 else ref.name


def _receives(held: _Held) -> int:
    return int(held.raw["Attributes"].get("ApproximateReceiveCount", 1))


class _Held:
    """A received message this consumer keeps invisible: buffered or handed out."""

    __slots__ = ("extended_at", "group", "raw", "receipt")

    def __init__(self, raw: dict) -> None:
        self.raw = raw
        self.receipt: str = raw["ReceiptHandle"]
        self.group: str | None = raw.get("Attributes", {}).get("MessageGroupId")
        self.extended_at = time.monotonic()


class _Deletes:
    """Acks turned into `DeleteMessageBatch` calls: sent when ten are pending or
    `linger` seconds after the first. A failed delete is logged; the message comes
    back after its visibility timeout (at least once)."""

    def __init__(self, broker: SqsBroker, ref: QueueRef) -> None:
        self._broker = broker
        self._ref = ref
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def add(self, receipt: str) -> None:
        self._pending.append(receipt)
        if len(self._pending) >= BATCH:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._broker.linger, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for chunk in _chunks(pending, BATCH):
            task = asyncio.create_task(self._delete(chunk))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _delete(self, receipts: list[str]) -> None:
        aws = self._broker.aws
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        try:
            result = await aws.call(aws.sqs.delete_message_batch, QueueUrl=self._ref.url, Entries=entries)
        except BrokerError as exc:
            log.warning(
                "deleting %d acked message(s) from %s failed; they will come back: %s",
                len(receipts),
                self._ref.name,
                exc,
            )
            return
        for failure in result.get("Failed", []):
            log.warning("deleting an acked message from %s failed; it will come back: %s", self._ref.name, failure)

    async def drain(self) -> None:
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


class _SqsDelivery(Delivery):
    __slots__ = ("_consumer", "_held")

    def __init__(self, consumer: _SqsConsumer, held: _Held, message: Message, attempt: int) -> None:
        super().__init__(message, consumer.queue, attempt)
        self._consumer = consumer
        self._held = held

    @property
    def receipt(self) -> str:
        """The receipt handle: with `SqsBroker.hide`, a host that times a retried
        message itself shows it again when its own clock says (`mailbag.testing`)."""
        return self._held.receipt

    async def _ack(self) -> None:
        self._consumer.ack(self)

    async def _retry(self, delay: float) -> None:
        await self._consumer.retry(self, delay)

    async def _postpone(self, delay: float) -> None:
        await self._consumer.postpone(self, delay)

    async def _dead_letter(self, reason: str, error: BaseException | None) -> None:
        await self._consumer.dead_letter(self, reason, error)

    async def _release(self, delay: float) -> None:
        await self._consumer.release(self, delay)


#: seconds `close` waits for long polls in flight before it abandons them
CLOSE_WAIT = 0.5


class _SqsConsumer(Consumer):
    """Polls only while someone waits for a delivery and fewer than `prefetch` messages
    are held, so a closing consumer rarely has a receive in flight. On a FIFO queue a
    message is handed out only once the previous one of its group is settled."""

    def __init__(self, broker: SqsBroker, queue: str, prefetch: int) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = prefetch
        self._ref: QueueRef | None = None
        self._deletes: _Deletes | None = None
        self._buffer: deque[_Held] = deque()
        self._unsettled: dict[_SqsDelivery, None] = {}
        self._busy_groups: set[str | None] = set()
        #: SQS message id -> receives that ran no handler (FIFO postpones), not attempts
        self._uncounted: dict[str, int] = {}
        self._poll: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._visibility = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._stop = asyncio.Event()
        self._failures = 0
        self._closed = False

    async def __anext__(self) -> Delivery:
        try:
            ref = self._ref or await self._open()
        except BrokerError:
            if self._stop.is_set():
                raise StopAsyncIteration from None  # closed while looking the queue up
            raise
        while True:
            if self._stop.is_set():
                raise StopAsyncIteration
            held = self._next_ready(ref)
            if held is not None:
                delivery = await self._hand_out(ref, held)
                if delivery is not None:
                    return delivery
                continue
            room = self.prefetch - len(self._unsettled) - len(self._buffer)
            if self._poll is None and room > 0:
                self._poll = asyncio.create_task(self._fill(ref, min(BATCH, room)))
                self.broker._polls[self._poll] = self
                self._poll.add_done_callback(lambda poll: self.broker._polls.pop(poll, None))
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _open(self) -> QueueRef:
        ref = await self.broker._resources.queue(self.queue)
        if self._ref is None:
            self._ref = ref
            self._deletes = _Deletes(self.broker, ref)
            if ref.visibility > 0 and not self._closed:
                self._heartbeat = asyncio.create_task(self._beat(ref))
        return self._ref

    def _next_ready(self, ref: QueueRef) -> _Held | None:
        if len(self._unsettled) >= self.prefetch:
            return None
        for i, held in enumerate(self._buffer):
            if not ref.fifo or held.group not in self._busy_groups:
                del self._buffer[i]
                return held
        return None

    async def _hand_out(self, ref: QueueRef, held: _Held) -> _SqsDelivery | None:
        """The delivery for a received message, or None when it was dead-lettered unrun:
        undecodable (not ours to drop: parked as it came, with the reason), or received
        more often than its queue allows attempts (its handler keeps crashing workers),
        counted by SQS's own receive count less receives that ran no handler."""
        try:
            message, used = attempts_used(from_wire(held.raw, _default_topic(ref)))
        except (ValueError, KeyError, TypeError) as exc:
            fallback = Message(_default_topic(ref), held.raw["Body"].encode(), id=held.raw["MessageId"])
            await self._dead_letter_unrun(self._track(ref, held, fallback, 0), f"undecodable SQS message: {exc}", exc)
            return None
        delivery = self._track(ref, held, message, used)
        runs = _receives(held) - self._uncounted.get(held.raw["MessageId"], 0)
        if ref.max_attempts is not None and runs > ref.max_attempts:
            delivery.attempt -= 1
            await self._dead_letter_unrun(delivery, h.DELIVERY_LIMIT_EXCEEDED, None)
            return None
        return delivery

    async def _dead_letter_unrun(self, delivery: _SqsDelivery, reason: str, error: BaseException | None) -> None:
        """Dead-letter a message without handing it out. If that fails (the dead-letter
        queue is gone) it goes back, hidden for a growing pause (`mailbag.broker.backoff`)."""
        message_id = delivery.message.id
        try:
            await delivery.dead_letter(reason, error)
        except Exception as failed:
            pause = RETURNS.failed(delivery.queue, message_id)
            log.error("could not dead-letter message %s, it goes back in %gs: %r", message_id, pause, failed)
            await delivery.release(pause)
        else:
            RETURNS.settled(delivery.queue, message_id)

    def _track(self, ref: QueueRef, held: _Held, message: Message, used: int) -> _SqsDelivery:
        attempt = _receives(held) + used - self._uncounted.get(held.raw["MessageId"], 0)
        delivery = _SqsDelivery(self, held, message, max(1, attempt))
        self._unsettled[delivery] = None
        if ref.fifo:
            self._busy_groups.add(held.group)
        return delivery

    async def _fill(self, ref: QueueRef, count: int) -> None:
        """One receive into the buffer. After a short batch (messages trickling in) the
        next receive waits `linger` so it comes back fuller; after a failure it backs off."""
        try:
            received = await self.broker._receive(ref, count, self.broker.wait)
        except BrokerError as exc:
            self._failures += 1
            pause = min(1.0, 0.25 * 2**self._failures)  # seen back within about 1 s of SQS answering
            log.error("receiving from %s failed (retrying in %.1fs): %s", ref.name, pause, exc)
            self.broker.link.report(False, f"receiving from {ref.name} failed: {exc}")
            received = []
        else:
            self._failures = 0
            self.broker.link.report(True)
            pause = self.broker.linger if 0 < len(received) < count else 0.0
        if self._closed:
            self._poll = None
            await self.broker._change_visibility(ref, [m["ReceiptHandle"] for m in received], 0)
            return
        self._buffer.extend(_Held(m) for m in received)
        self._wakeup.set()
        try:
            if pause:
                await asyncio.wait_for(self._stop.wait(), pause)
        except TimeoutError:
            pass
        finally:
            self._poll = None
            self._wakeup.set()

    # -- settlement -----------------------------------------------------------

    def _finish(self, delivery: _SqsDelivery) -> _Held:
        if self._unsettled.pop(delivery, False) is False:
            raise DeliveryReleased(
                f"message {delivery.message.id} went back to {self.queue!r} when its consumer closed"
            )
        self._busy_groups.discard(delivery._held.group)
        self._wakeup.set()
        return delivery._held

    def ack(self, delivery: _SqsDelivery) -> None:
        held = self._finish(delivery)
        assert self._deletes is not None
        self._deletes.add(held.receipt)
        self._uncounted.pop(held.raw["MessageId"], None)

    async def retry(self, delivery: _SqsDelivery, delay: float) -> None:
        ref = self._ref
        assert ref is not None
        if ref.max_attempts is not None and delivery.attempt >= ref.max_attempts:
            await self.dead_letter(delivery, h.DELIVERY_LIMIT_EXCEEDED, None)
            return
        await self._hide(ref, self._finish(delivery), delay)

    async def _hide(self, ref: QueueRef, held: _Held, delay: float) -> None:
        """Keep a settled message invisible for `delay` (rounded up to whole seconds).
        FIFO: the rest of the group we hold goes back too, behind it, which keeps the
        group locked in SQS until it is visible again."""
        behind = [b for b in self._buffer if ref.fifo and b.group == held.group]
        for b in behind:
            self._buffer.remove(b)
            uncount(self._uncounted, b.raw["MessageId"])  # held back unrun: its receive is no attempt
        async with self._visibility:
            await self.broker._change_visibility(ref, [b.receipt for b in behind], 0)
            await self.broker._change_visibility(ref, [held.receipt], min(MAX_VISIBILITY, math.ceil(delay)))

    async def postpone(self, delivery: _SqsDelivery, delay: float) -> None:
        """Standard queue: a copy goes back with `DelaySeconds`, carrying the attempts
        used so far, and the original is deleted. FIFO (no per-message delay, and a copy
        would go behind its group), or a delay past SQS's 900 s: the message is hidden
        for the delay and this receive is remembered as no attempt."""
        ref = self._ref
        assert ref is not None and self._deletes is not None
        seconds = math.ceil(delay)
        if ref.fifo or seconds > MAX_DELAY_SECONDS:
            held = self._finish(delivery)
            uncount(self._uncounted, held.raw["MessageId"])
            await self._hide(ref, held, delay)
            return
        await self.broker._send_to(ref, [with_attempts_used(delivery.message, delivery.attempt - 1)], seconds)
        self._deletes.add(self._finish(delivery).receipt)

    async def dead_letter(self, delivery: _SqsDelivery, reason: str, error: BaseException | None) -> None:
        ref = self._ref
        assert ref is not None and self._deletes is not None
        if ref.dead_letter is None:
            raise TopologyError(f"{self.queue!r} has no dead-letter queue (it is one, or has no RedrivePolicy)")
        message = delivery.message
        dead = dead_letter_copy(message, self.queue, delivery.attempt, reason, error, SQS_MAX_BYTES)
        await self.broker._send_to(ref.dead_letter, [dead])
        held = self._finish(delivery)
        self._deletes.add(held.receipt)
        self._uncounted.pop(held.raw["MessageId"], None)

    async def release(self, delivery: _SqsDelivery, delay: float) -> None:
        """Visible again after `delay`, rounded up to whole seconds (best effort: a failed
        change leaves the queue's visibility timeout)."""
        if self._unsettled.pop(delivery, False) is not False:
            self._busy_groups.discard(delivery._held.group)
            self._wakeup.set()
        if self._ref is not None and not self._closed:
            async with self._visibility:
                await self.broker._change_visibility(
                    self._ref, [delivery._held.receipt], min(MAX_VISIBILITY, math.ceil(delay))
                )

    # -- heartbeat and shutdown -----------------------------------------------

    async def _beat(self, ref: QueueRef) -> None:
        """Every third of the visibility timeout, extend what has been held that long,
        so a handler slower than the timeout is not redelivered mid-run."""
        period = ref.visibility / 3
        while not self._closed:
            try:
                await asyncio.wait_for(self._stop.wait(), period)
            except TimeoutError:
                pass
            now = time.monotonic()
            due = [x for x in self._holding() if now - x.extended_at >= period]
            if not due:
                continue
            async with self._visibility:
                await self.broker._change_visibility(ref, [x.receipt for x in due], ref.visibility)
            for x in due:
                x.extended_at = now

    def _holding(self) -> list[_Held]:
        return list(self._buffer) + [d._held for d in self._unsettled]

    @property
    def closed(self) -> bool:
        return self._closed

    def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()

    async def close(self) -> None:
        """Returns held messages to the queue at once (visibility 0) after sending
        pending acks; a receive still in flight returns its messages when it ends."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        held = self._holding()
        self._buffer.clear()
        self._unsettled.clear()
        self._busy_groups.clear()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._deletes is not None:
            await self._deletes.drain()
        if held and self._ref is not None:
            async with self._visibility:
                await self.broker._change_visibility(self._ref, [x.receipt for x in held], 0)
        self.broker._consumers.discard(self)


_OPTIONS = {"region", "endpoint", "prefix", "wait", "visibility", "threads", "linger"}
#: long-poll seconds and queue visibility timeout when the URL names none
DEFAULT_WAIT = 20
DEFAULT_VISIBILITY = 30


async def open_broker(url: str, **options: Any) -> SqsBroker:
    """Open an `sqs://` URL; keyword options override the URL's query. Raises
    `BrokerUrlError` for a bad option and `BrokerUnavailable` when AWS does not answer."""
    shown = mask_url(url)
    if urlsplit(url).netloc:
        raise BrokerUrlError(f"{shown}: put settings in the query, e.g. sqs://?region=eu-west-1&prefix=dev-")
    opts: dict[str, Any] = {**query_options(url), **options}
    unknown = set(opts) - _OPTIONS
    if unknown:
        raise BrokerUrlError(
            f"{shown}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_OPTIONS))}"
        )
    wait = _number(shown, opts, "wait", DEFAULT_WAIT, int, 0, 20)
    visibility = _number(shown, opts, "visibility", DEFAULT_VISIBILITY, int, 0, 43_200)
    threads = _number(shown, opts, "threads", 32, int, 1, 1024)
    linger = _number(shown, opts, "linger", 0.2, float, 0, 10)
    aws = await asyncio.to_thread(
        AwsClients, region=opts.get("region"), endpoint=opts.get("endpoint"), threads=threads, where=shown
    )
    try:
        resources = Resources(
            aws, prefix=opts.get("prefix", ""), visibility=visibility, max_message_bytes=SQS_MAX_BYTES
        )
    except ValueError as exc:
        await asyncio.to_thread(aws.close)
        raise BrokerUrlError(f"{shown}: {exc}") from None
    try:
        await aws.call(
            aws.sqs.list_queues, MaxResults=1, **({"QueueNamePrefix": resources.prefix} if resources.prefix else {})
        )
    except BrokerError as exc:
        await asyncio.to_thread(aws.close)
        raise BrokerUnavailable(f"cannot open {shown}: {exc}") from None
    return SqsBroker(shown, aws, resources, wait=wait, linger=linger)


def _number(shown: str, opts: dict[str, Any], name: str, default: float, kind: type, low: float, high: float) -> Any:
    raw = opts.get(name, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise BrokerUrlError(f"{shown}: {name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise BrokerUrlError(f"{shown}: {name} must be between {low} and {high}, got {value}")
    return value
