"""The Redis idempotency store (`redis://host:6379/0?prefix=...`).

A record is one string key holding JSON `{"token", "outcome"}` with a Redis expiry:
the lease while running, the TTL once done, so Redis forgets records by itself.
Claiming is `SET NX`; completing and releasing check the token in a Lua script, so a
run whose lease ran out cannot overwrite the run that took over.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mailbag.broker.errors import StoreUnavailable
from mailbag.broker.url import mask_url, query_options
from mailbag.workers.stores import Claim, IdempotencyStore, new_token

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

    async def claim(self, key: str, lease: float) -> Claim:
        name, token = self.prefix + key, new_token()
        record = json.dumps({"token": token, "outcome": None})
        if await self.client.set(name, record, nx=True, px=_ms(lease)):
            return Claim("claimed", token)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(name)
            pipe.pttl(name)
            current, ttl_ms = await pipe.execute()
        if current is None:
            return Claim("busy", retry_in=_RACE_RETRY)
        outcome = json.loads(current)["outcome"]
        if outcome is not None:
            return Claim("done", outcome=outcome)
        return Claim("busy", retry_in=max(_RACE_RETRY, ttl_ms / 1000))

    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        record = json.dumps({"token": token, "outcome": outcome})
        await self._complete(keys=[self.prefix + key], args=[token, record, _ms(ttl)])

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[self.prefix + key], args=[token])

    async def close(self) -> None:
        await self.client.aclose()


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
