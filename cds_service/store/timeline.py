"""Each patient's recent canonical observations in Redis, the history a hook call merges into.

Layout, per patient (``p`` = keyed pseudonym of the patient id; the raw id is never a key):

* ``cds:tl:{p}:{variable}`` — a sorted set, score = observation time (epoch seconds), member =
  ``{source}|{value}``, so that values of a variable are time-ordered;
* ``cds:tli:{p}`` — a hash ``{variable}|{source}`` → member, so that an amended observation (same
  source, new value) replaces its old value instead of standing beside it.

Merging the same observation twice stores it once (the same member is added again). Values older
than the retention (72 h by default) are trimmed on every merge and every key expires after the
retention without writes. A hook call's merge and window read are one round trip together.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cds_service.errors import DependencyUnavailable
from cds_service.security.pseudonym import Pseudonymiser
from fhir_adapters.canonical import CanonicalObservation

# One script merges a batch and reads the window back, so that a hook call costs one round trip
# and one short command (packing thousands of arguments costs redis-py more than Redis's work).
# KEYS[1]: the index hash. ARGV[1]: JSON {ttl, oldest, prefix, obs: [[variable, source, score,
# member], ...], read: [start, end] or absent, variables: [...]}. Scores travel as strings: cjson
# would round them to 14 digits. Returns JSON {added, rows: [[variable, member, score], ...]}.
_MERGE_AND_READ = """
local job = cjson.decode(ARGV[1])
local ttl, oldest, prefix = tonumber(job.ttl), tonumber(job.oldest), job.prefix
local added = 0
local touched = {}
for _, o in ipairs(job.obs) do
  local variable, source, score, member = o[1], o[2], tonumber(o[3]), o[4]
  local zkey = prefix .. ':' .. variable
  -- Hook calls resend the newest observations every time: a member already stored at this score
  -- is the common case and needs no more work.
  if score >= oldest and tonumber(redis.call('ZSCORE', zkey, member)) ~= score then
    local field = variable .. '|' .. source
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
if next(touched) ~= nil then
  redis.call('EXPIRE', KEYS[1], ttl)
end
local rows = {}
if job.read then
  for _, variable in ipairs(job.variables) do
    local found = redis.call('ZRANGEBYSCORE', prefix .. ':' .. variable, job.read[1], job.read[2],
                             'WITHSCORES')
    for i = 1, #found, 2 do
      rows[#rows + 1] = {variable, found[i], found[i + 1]}
    end
  end
end
return cjson.encode({added = added, rows = rows})
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
        self._script = redis.register_script(_MERGE_AND_READ)

    def _prefix(self, patient: str) -> str:
        return f"cds:tl:{self._pseudonymiser.pseudonym('patient', patient)}"

    def _index(self, patient: str) -> str:
        return f"cds:tli:{self._pseudonymiser.pseudonym('patient', patient)}"

    async def merge(
        self, patient: str, observations: Iterable[CanonicalObservation], now: datetime
    ) -> int:
        """Add observations of one patient; returns how many were new."""
        added, _ = await self._run(patient, observations, now, window=None)
        return added

    async def window(
        self, patient: str, start: datetime, end: datetime
    ) -> list[CanonicalObservation]:
        """The patient's observations with start <= time <= end, of every variable, time-ordered."""
        _, rows = await self._run(patient, (), end, window=(start, end))
        return rows

    async def merge_and_read(
        self,
        patient: str,
        observations: Iterable[CanonicalObservation],
        now: datetime,
        start: datetime,
        end: datetime,
    ) -> tuple[int, list[CanonicalObservation]]:
        """Merge, then read the window back, in one round trip (what a hook call does)."""
        return await self._run(patient, observations, now, window=(start, end))

    async def _run(
        self,
        patient: str,
        observations: Iterable[CanonicalObservation],
        now: datetime,
        window: tuple[datetime, datetime] | None,
    ) -> tuple[int, list[CanonicalObservation]]:
        job: dict[str, object] = {
            "ttl": self._retention_s,
            "oldest": repr(now.timestamp() - self._retention_s),
            "prefix": self._prefix(patient),
            "obs": [
                [o.variable, o.source, repr(o.time.timestamp()), f"{o.source}|{o.value!r}"]
                for o in observations
            ],
            "variables": self._variables,
        }
        if window is not None:
            job["read"] = [repr(window[0].timestamp()), repr(window[1].timestamp())]
        try:
            raw = await self._script(keys=[self._index(patient)], args=[orjson.dumps(job)])
        except RedisError as exc:
            raise DependencyUnavailable("the timeline is unavailable") from exc
        result = orjson.loads(raw)
        found = [
            CanonicalObservation(
                patient=patient,
                variable=variable,
                time=datetime.fromtimestamp(float(score), UTC),
                value=float(member.rpartition("|")[2]),
                source=member.rpartition("|")[0],
            )
            for variable, member, score in result["rows"]
        ]
        found.sort(key=lambda o: (o.time, o.variable, o.source))
        return int(result["added"]), found
