"""The boto3 side of the SNS/SQS adapter: one SNS and one SQS client per broker, and
a thread pool that runs their blocking calls off the event loop.

Long polls hold a thread and an HTTP connection each for up to `wait` seconds, so they
run on a thread pool of their own (`poll`) that grows with the consumers, and the HTTP
connection pool has room for them on top of the other calls: the calls of `call`
(publishes, deletes, visibility heartbeats) never wait behind a long poll.
Errors leave here as `BrokerError`s: `BrokerUnavailable` when AWS cannot be reached,
`AwsError` (with the AWS error code) when it answered no, `BrokerClosed` after `close`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from mailbag.broker.errors import BrokerClosed, BrokerError, BrokerUnavailable, BrokerUrlError

#: the most long polls at once (one per consumer); their threads start as consumers do
MAX_POLLS = 1024


class AwsError(BrokerError):
    """AWS refused a call; `code` is its error code (e.g. `QueueDoesNotExist`)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class AwsClients:
    """The broker's SNS and SQS clients (public, so callers can hook botocore events,
    e.g. to count requests), `call`, which runs one API call on the pool, and `poll`,
    which runs one long poll (`receive_message`) on the pollers' own pool."""

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
        self._polls = ThreadPoolExecutor(max_workers=MAX_POLLS, thread_name_prefix="mailbag-sqs-poll")
        self._closed = False

    async def call(self, method: Callable[..., Any], **params: Any) -> Any:
        return await self._run(self._pool, method, params)

    async def poll(self, **params: Any) -> Any:
        """One `receive_message` (a long poll) on the pollers' pool."""
        return await self._run(self._polls, self.sqs.receive_message, params)

    async def _run(self, pool: ThreadPoolExecutor, method: Callable[..., Any], params: dict[str, Any]) -> Any:
        if self._closed:
            raise BrokerClosed(f"broker {self.where} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, functools.partial(method, **params))
        except RuntimeError:
            if self._closed:  # the pool shut down under this call
                raise BrokerClosed(f"broker {self.where} is closed") from None
            raise
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
        self._polls.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.sns.close()
        self.sqs.close()
