"""Feedback on cards (CDS Hooks 2.0.1 §Feedback), kept in a Redis stream.

Stored per entry: the service, the card and suggestion UUIDs (our own identifiers), the outcome,
its time, the override reason's code and system, and a keyed pseudonym of the calling EHR. The
clinician's free-text ``userComment`` is not stored, only its length: free text can name a
patient, and nothing here needs it yet.

Clients may send the same feedback again (the spec allows repeats); an entry is stored once.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cds_service.errors import DependencyUnavailable
from cds_service.hooks_models import FeedbackEntry
from cds_service.security.pseudonym import Pseudonymiser

STREAM = "cds:feedback"

# Deduplicate and append in one round trip: the stream never holds the same entry twice, even when
# two replicas receive the same retry at once.
_STORE_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
"""


@dataclass(frozen=True)
class StoredFeedback:
    received: int
    stored: int
    outcomes: list[tuple[str, bool]]


class FeedbackStore:
    def __init__(
        self, redis: aioredis.Redis, pseudonymiser: Pseudonymiser, retention_days: int
    ) -> None:
        self._redis = redis
        self._pseudonymiser = pseudonymiser
        self._retention_s = retention_days * 86_400
        self._script = redis.register_script(_STORE_ONCE)

    def _fields(self, service_id: str, client: str | None, entry: FeedbackEntry) -> list[str]:
        reason = entry.overrideReason.reason if entry.overrideReason else None
        comment = entry.overrideReason.userComment if entry.overrideReason else None
        return [
            "service", service_id,
            "card", entry.card,
            "outcome", entry.outcome,
            "outcome_time", entry.outcomeTimestamp.isoformat(),
            "accepted", ",".join(s.id for s in entry.acceptedSuggestions or []),
            "reason_system", reason.system if reason else "",
            "reason_code", reason.code if reason else "",
            "comment_chars", str(len(comment or "")),
            "client", self._pseudonymiser.pseudonym("client", client) if client else "",
        ]  # fmt: skip

    async def save(
        self, service_id: str, client: str | None, entries: list[FeedbackEntry]
    ) -> StoredFeedback:
        oldest_ms = int((time.time() - self._retention_s) * 1000)
        outcomes: list[tuple[str, bool]] = []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in entries:
                    fields = self._fields(service_id, client, entry)
                    identity = hashlib.sha256("\x00".join(fields).encode()).hexdigest()
                    await self._script(
                        keys=[f"cds:feedback:seen:{identity}", STREAM],
                        args=[self._retention_s, f"{oldest_ms}-0", *fields],
                        client=pipe,
                    )
                results = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("feedback could not be stored: Redis unavailable") from exc
        for entry, result in zip(entries, results, strict=True):
            outcomes.append((entry.outcome, bool(result)))
        return StoredFeedback(
            received=len(entries), stored=sum(1 for _, new in outcomes if new), outcomes=outcomes
        )
