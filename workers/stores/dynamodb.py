"""The DynamoDB idempotency store (`dynamodb://TABLE?region=...&endpoint_url=...`),
for workers spread over hosts on AWS.

One item per key: `pk`, `token`, `outcome` (absent while running), `expires_at`
(seconds, float) and `ttl` (whole seconds, DynamoDB's own TTL attribute, which
deletes expired items eventually). Claiming is a conditional put that only replaces
a missing or expired item; completing and releasing are conditional on the token.
The table (on-demand, TTL on) is created when missing. boto3 calls run in a thread.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from mailbag.broker.errors import ConfigurationError, StoreUnavailable
from mailbag.broker.url import mask_url, query_options
from mailbag.workers.stores import Claim, IdempotencyStore, new_token

_RACE_RETRY = 0.05


def _failed_condition(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoDbStore(IdempotencyStore):
    def __init__(self, client: Any, table: str, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.table = table
        self.clock = clock

    def ensure_table(self) -> None:
        try:
            self.client.describe_table(TableName=self.table)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        self.client.create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.client.get_waiter("table_exists").wait(TableName=self.table)
        self.client.update_time_to_live(
            TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"}
        )

    async def claim(self, key: str, lease: float) -> Claim:
        return await asyncio.to_thread(self._claim, key, lease)

    def _claim(self, key: str, lease: float) -> Claim:
        now, token = self.clock(), new_token()
        try:
            self.client.put_item(
                TableName=self.table,
                Item={"pk": {"S": key}, "token": {"S": token}, **_expiry(now + lease)},
                ConditionExpression="attribute_not_exists(#pk) OR #exp <= :now",
                ExpressionAttributeNames={"#pk": "pk", "#exp": "expires_at"},
                ExpressionAttributeValues={":now": {"N": repr(now)}},
            )
            return Claim("claimed", token)
        except ClientError as exc:
            if not _failed_condition(exc):
                raise
        item = self.client.get_item(TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
        if item is None:
            return Claim("busy", retry_in=_RACE_RETRY)
        if "outcome" in item:
            return Claim("done", outcome=item["outcome"]["S"])
        return Claim("busy", retry_in=max(_RACE_RETRY, float(item["expires_at"]["N"]) - now))

    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        expiry = _expiry(self.clock() + ttl)
        await self._conditional(
            self.client.update_item,
            Key={"pk": {"S": key}},
            UpdateExpression="SET #outcome = :outcome, #exp = :exp, #ttl = :ttl",
            ConditionExpression="#token = :token",
            ExpressionAttributeNames={"#outcome": "outcome", "#exp": "expires_at", "#ttl": "ttl", "#token": "token"},
            ExpressionAttributeValues={
                ":outcome": {"S": outcome},
                ":exp": expiry["expires_at"],
                ":ttl": expiry["ttl"],
                ":token": {"S": token},
            },
        )

    async def release(self, key: str, token: str) -> None:
        await self._conditional(
            self.client.delete_item,
            Key={"pk": {"S": key}},
            ConditionExpression="#token = :token",
            ExpressionAttributeNames={"#token": "token"},
            ExpressionAttributeValues={":token": {"S": token}},
        )

    async def _conditional(self, call: Callable[..., Any], **request: Any) -> None:
        """Run a write that applies only while our token holds the key; when another
        run took the key over, there is nothing of ours left to change."""
        try:
            await asyncio.to_thread(call, TableName=self.table, **request)
        except ClientError as exc:
            if not _failed_condition(exc):
                raise


def _expiry(at: float) -> dict[str, dict[str, str]]:
    return {"expires_at": {"N": repr(at)}, "ttl": {"N": str(math.ceil(at))}}


async def open_store(url: str) -> DynamoDbStore:
    table = urlsplit(url).netloc or urlsplit(url).path.strip("/")
    if not table:
        raise ConfigurationError(f"the DynamoDB store URL names no table: {mask_url(url)!r}")
    options = query_options(url)
    client = boto3.client("dynamodb", region_name=options.get("region"), endpoint_url=options.get("endpoint_url"))
    store = DynamoDbStore(client, table)
    try:
        await asyncio.to_thread(store.ensure_table)
    except (BotoCoreError, ClientError) as exc:
        raise StoreUnavailable(f"cannot use DynamoDB table {table!r}: {exc}") from None
    return store
