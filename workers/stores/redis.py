"""The Redis idempotency store (`redis://host:6379/0?prefix=...`).

A record is one string key holding JSON `{"token", "outcome"}` with a Redis expiry:
the lease while running, the TTL once done, so Redis forgets records by itself.
Claiming is `SET NX`; completing and releasing check the token in a Lua script, so a
run whose lease ran out cannot overwrite the run that took over. The calls of
concurrent handlers go to Redis together, one pipeline per batch (see `batches`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mailbag.broker.errors import StoreUnavailable
from mailbag.broker.url import mask_url, query_options
from mailbag.workers.stores import Claim, IdempotencyStore, new_token
from mailbag.workers.stores.batches import Batches, Op

_COMPLETE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['token'] == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return nil
"""

_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['token'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: a claim whose record vanished between two commands asks again this soon
_RACE_RETRY = 0.05


class RedisStore(IdempotencyStore):
    def __init__(self, client: aioredis.Redis, prefix: str = "mailbag:idem:") -> None:
        self.client = client
        self.prefix = prefix
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        self._batches = Batches(self._write, (RedisError, OSError), "the Redis idempotency store")

    async def claim(self, key: str, lease: float) -> Claim:
        claim: Claim = await self._batches.submit("claim", self.prefix + key, lease)
        return claim

    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        record = json.dumps({"token": token, "outcome": outcome})
        await self._batches.submit("complete", self.prefix + key, token, record, _ms(ttl))

    async def release(self, key: str, token: str) -> None:
        await self._batches.submit("release", self.prefix + key, token)

    async def close(self) -> None:
        await self._batches.close()
        await self.client.aclose()

    async def _write(self, batch: list[Op]) -> list[Any]:
        """The whole batch in one pipeline (not a transaction: each command stands
        alone). A claim is `SET NX` followed by `GET` and `PTTL`, read only if the
        `SET` did not take the key."""
        tokens = []
        async with self.client.pipeline(transaction=False) as pipe:
            for op in batch:
                if op.kind == "claim":
                    name, lease = op.args
                    tokens.append(new_token())
                    pipe.set(name, json.dumps({"token": tokens[-1], "outcome": None}), nx=True, px=_ms(lease))
                    pipe.get(name)
                    pipe.pttl(name)
                elif op.kind == "complete":
                    name, token, record, ttl_ms = op.args
                    await self._complete(keys=[name], args=[token, record, ttl_ms], client=pipe)
                else:
                    name, token = op.args
                    await self._release(keys=[name], args=[token], client=pipe)
            replies = iter(await pipe.execute())
        claims = iter(tokens)
        answers: list[Any] = []
        for op in batch:
            if op.kind == "claim":
                answers.append(_claim(next(claims), replies))
            else:
                next(replies)  # a script's reply: whether our token still held the key
                answers.append(None)
        return answers


def _claim(token: str, replies: Iterator[Any]) -> Claim:
    """A claim's answer from its three replies (SET NX, GET, PTTL)."""
    taken, current, ttl_ms = next(replies), next(replies), next(replies)
    if taken:
        return Claim("claimed", token)
    if current is None:
        return Claim("busy", retry_in=_RACE_RETRY)
    outcome = json.loads(current)["outcome"]
    if outcome is not None:
        return Claim("done", outcome=outcome)
    return Claim("busy", retry_in=max(_RACE_RETRY, ttl_ms / 1000))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


async def open_store(url: str) -> RedisStore:
    prefix = query_options(url).get("prefix", "mailbag:idem:")
    client = aioredis.from_url(url.split("?", 1)[0])
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise StoreUnavailable(f"cannot reach Redis at {mask_url(url)}: {exc}") from None
    return RedisStore(client, prefix)
