"""The boto3 side of the SNS/SQS adapter: one SNS and one SQS client per broker, and
a thread pool that runs their blocking calls off the event loop.

Long polls run on threads of their own (`poll`), outside the pool, and the HTTP
connection pool has room for them on top of the other calls: a poll holds its thread
and a connection for up to `wait` seconds, a closing broker (or an exiting process)
must not wait for it, and the calls of `call` (publishes, deletes, visibility
heartbeats) never queue behind one. Errors leave here as `BrokerError`s:
`BrokerUnavailable` when AWS cannot be reached, `AwsError` (with the AWS error code)
when it answered no, `BrokerClosed` after `close`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from mailbag.broker.errors import BrokerClosed, BrokerError, BrokerUnavailable, BrokerUrlError

#: HTTP connections kept for long polls (one per consumer) besides the pool's calls
MAX_POLLS = 1024


class AwsError(BrokerError):
    """AWS refused a call; `code` is its error code (e.g. `QueueDoesNotExist`)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class AwsClients:
    """The broker's SNS and SQS clients (public, so callers can hook botocore events,
    e.g. to count requests) and `call`, which runs one API call on the pool."""

    def __init__(self, *, region: str | None, endpoint: str | None, threads: int, where: str) -> None:
        self.where = where
        # connections open as needed: room for every poller besides the other calls
        config = Config(max_pool_connections=threads + MAX_POLLS, retries={"mode": "standard", "max_attempts": 5})
        session = boto3.session.Session()
        try:
            self.sns = session.client("sns", region_name=region, endpoint_url=endpoint, config=config)
            self.sqs = session.client("sqs", region_name=region, endpoint_url=endpoint, config=config)
        except NoRegionError:
            raise BrokerUrlError(
                f"no AWS region for {where}: add ?region=... to the URL or set AWS_DEFAULT_REGION"
            ) from None
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mailbag-sqs")
        self._closed = False

    async def call(self, method: Callable[..., Any], **params: Any) -> Any:
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            pending = loop.run_in_executor(self._pool, functools.partial(method, **params))
        except RuntimeError:
            self._check_open()  # the pool shut down under this call
            raise
        return await self._answer(pending)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed(f"broker {self.where} is closed")

    async def poll(self, method: Callable[..., Any], **params: Any) -> Any:
        """`call` on a daemon thread of its own: cancelling the await abandons the call,
        and neither `close` nor the interpreter's exit waits for it to end."""
        self._check_open()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not answer.done():
                outcome()

        def run() -> None:
            try:
                result = method(**params)
            except BaseException as exc:  # handed to the awaiting task, which raises it
                outcome = functools.partial(answer.set_exception, exc)
            else:
                outcome = functools.partial(answer.set_result, result)
            try:
                loop.call_soon_threadsafe(settle, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        threading.Thread(target=run, name="mailbag-sqs-poll", daemon=True).start()
        return await self._answer(answer)

    async def _answer(self, pending: asyncio.Future[Any]) -> Any:
        try:
            return await pending
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            raise AwsError(
                f"{exc.operation_name} failed on {self.where}: {code}: {error.get('Message', '')}", code
            ) from None
        except NoCredentialsError:
            raise BrokerUnavailable(
                f"no AWS credentials for {self.where}: set them in the environment, a profile or an instance role"
            ) from None
        except BotoCoreError as exc:
            raise BrokerUnavailable(f"cannot reach AWS at {self.where}: {exc}") from None

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)
        self.sns.close()
        self.sqs.close()
