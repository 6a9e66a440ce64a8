"""Each patient's recent canonical observations in Redis, the history a hook call merges into.

Layout, per patient (``p`` = keyed pseudonym of the patient id; the raw id is never a key):

* ``cds:tl:{p}:{variable}`` — a sorted set, score = observation time (epoch seconds), member =
  ``{source}|{value}``, so that values of a variable are time-ordered;
* ``cds:tli:{p}`` — a hash ``{variable}|{source}`` → member, so that an amended observation (same
  source, new value) replaces its old value instead of standing beside it.

Merging the same observation twice stores it once (the same member is added again). Values older
than the retention (72 h by default) are trimmed on every merge and every key expires after the
retention without writes. A merge and a window read are one round trip each.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cds_service.errors import DependencyUnavailable
from cds_service.security.pseudonym import Pseudonymiser
from fhir_adapters.canonical import CanonicalObservation

# KEYS[1] index hash; ARGV: retention seconds, oldest score kept, then (zset key, field, score,
# member) quadruples. Returns how many members were new.
_MERGE = """
local added = 0
local ttl = tonumber(ARGV[1])
local oldest = tonumber(ARGV[2])
local touched = {}
for i = 3, #ARGV, 4 do
  local zkey, field, score, member = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  if score >= oldest then
    local previous = redis.call('HGET', KEYS[1], field)
    if previous and previous ~= member then
      redis.call('ZREM', zkey, previous)
    end
    added = added + redis.call('ZADD', zkey, score, member)
    redis.call('HSET', KEYS[1], field, member)
    touched[zkey] = true
  end
end
for zkey, _ in pairs(touched) do
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', '(' .. oldest)
  redis.call('EXPIRE', zkey, ttl)
end
redis.call('EXPIRE', KEYS[1], ttl)
return added
"""


class TimelineStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        pseudonymiser: Pseudonymiser,
        variables: Iterable[str],
        retention_s: int,
    ) -> None:
        self._redis = redis
        self._pseudonymiser = pseudonymiser
        self._variables = tuple(variables)
        self._retention_s = retention_s
        self._merge = redis.register_script(_MERGE)

    def _prefix(self, patient: str) -> str:
        return f"cds:tl:{self._pseudonymiser.pseudonym('patient', patient)}"

    def _index(self, patient: str) -> str:
        return f"cds:tli:{self._pseudonymiser.pseudonym('patient', patient)}"

    async def merge(
        self, patient: str, observations: Iterable[CanonicalObservation], now: datetime
    ) -> int:
        """Add observations of one patient; returns how many were new."""
        prefix = self._prefix(patient)
        oldest = now.timestamp() - self._retention_s
        args: list[str | int | float] = [self._retention_s, oldest]
        for obs in observations:
            member = f"{obs.source}|{obs.value!r}"
            args += [
                f"{prefix}:{obs.variable}",
                f"{obs.variable}|{obs.source}",
                obs.time.timestamp(),
                member,
            ]
        if len(args) == 2:
            return 0
        try:
            added = await self._merge(keys=[self._index(patient)], args=args)
        except RedisError as exc:
            raise DependencyUnavailable("the timeline could not be stored") from exc
        return int(added)

    async def window(
        self, patient: str, start: datetime, end: datetime
    ) -> list[CanonicalObservation]:
        """The patient's observations with start <= time <= end, of every variable, time-ordered."""
        prefix = self._prefix(patient)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for variable in self._variables:
                    pipe.zrangebyscore(
                        f"{prefix}:{variable}", start.timestamp(), end.timestamp(), withscores=True
                    )
                results = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("the timeline could not be read") from exc
        found: list[CanonicalObservation] = []
        for variable, rows in zip(self._variables, results, strict=True):
            for member, score in rows:
                source, _, value = member.decode().rpartition("|")
                found.append(
                    CanonicalObservation(
                        patient=patient,
                        variable=variable,
                        time=datetime.fromtimestamp(score, UTC),
                        value=float(value),
                        source=source,
                    )
                )
        found.sort(key=lambda o: (o.time, o.variable, o.source))
        return found
