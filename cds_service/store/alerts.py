"""Alert discipline: do not show a clinician the same card again, and honour their overrides.

A card for a patient and service is not shown again within the repeat window unless the risk band
rises; an override with a reason (CDS Hooks 2.0.1 §Feedback ``overrideReason``) silences the
service for that patient for the snooze time. All state lives in Redis, so every replica agrees.

Layout (``p`` = keyed pseudonym of the patient id; the raw id is never a key or a value):

* ``cds:alert:{service}:{p}`` — a hash ``band`` (rank), ``shown_at`` (epoch ms), ``card`` (UUID)
  of the last card shown; it expires after the repeat window;
* ``cds:snooze:{service}:{p}`` — a string, the epoch ms until which the service is silent for the
  patient; it expires after the snooze time;
* ``cds:alertcard:{uuid}`` — a hash ``service``, ``patient`` (``p``), ``band`` of a card shown, so
  that feedback arriving later finds its patient; it expires after the card memory.

Time. Decisions compare times the caller passes in (``now`` of the hook call, the feedback's
``outcomeTimestamp``), never the clock of the process or of Redis, so that replicas agree and tests
can drive time. TTLs are set from the same durations and only bound how long a key lives: a key is
gone once its time has passed on Redis's clock at the latest. A snooze runs from the override's
``outcomeTimestamp``; a feedback resent with an older timestamp never shortens it, and a far-future
timestamp is capped by the key's TTL. A duration of 0 disables its rule.

The window restarts on every card shown: after a rise, the new band and time are kept and an equal
or lower band is quiet until the window has passed since the rise. A suppressed card leaves the
state untouched, so a window is measured from the last card the clinician saw.

Failure. Each call is one round trip (one Lua script), so two replicas answering the same patient
at once show the card once. When Redis does not answer, :class:`DependencyUnavailable` is raised
and the caller shows the card with ``AlertDecision(show=True, reason="unavailable")``: the
discipline fails open, because a missed sepsis alert is worse than a repeated one.

The scripts build the snooze key from the stored pseudonym, so they assume one Redis (no Cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast
from uuid import UUID

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cds_service.errors import DependencyUnavailable
from cds_service.hooks_models import FeedbackEntry
from cds_service.security.pseudonym import Pseudonymiser

ALERT = "cds:alert"
SNOOZE = "cds:snooze"
CARD = "cds:alertcard"

Reason = Literal["first", "band-rose", "repeat", "snoozed", "unavailable"]

# KEYS: the alert hash, the snooze key, the card key. ARGV: now (ms), band rank, card UUID,
# window (ms), card memory (ms), service, patient pseudonym. Returns the decision's reason.
_DECIDE = """
local now, band = tonumber(ARGV[1]), tonumber(ARGV[2])
local window, memory = tonumber(ARGV[4]), tonumber(ARGV[5])
local snoozed_until = tonumber(redis.call('GET', KEYS[2]))
if snoozed_until and snoozed_until > now then
  return 'snoozed'
end
local reason = 'first'
if window > 0 then
  local last = redis.call('HMGET', KEYS[1], 'band', 'shown_at')
  local last_band, shown_at = tonumber(last[1]), tonumber(last[2])
  -- A shown_at ahead of now (another replica's clock) counts as inside the window.
  if last_band and shown_at and now - shown_at < window then
    if band <= last_band then
      return 'repeat'
    end
    reason = 'band-rose'
  end
  redis.call('HSET', KEYS[1], 'band', ARGV[2], 'shown_at', ARGV[1], 'card', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
end
if memory > 0 then
  redis.call('HSET', KEYS[3], 'service', ARGV[6], 'patient', ARGV[7], 'band', ARGV[2])
  redis.call('PEXPIRE', KEYS[3], memory)
end
return reason
"""

# KEYS: one card key per entry. ARGV: service, snooze key prefix, snooze (ms), then per entry its
# kind ('snooze', 'no-reason' or 'accepted') and the snooze's end (ms). Returns the four counts.
_APPLY_FEEDBACK = """
local service, prefix, snooze = ARGV[1], ARGV[2], tonumber(ARGV[3])
local snoozed, unknown, no_reason, accepted = 0, 0, 0, 0
for i, key in ipairs(KEYS) do
  local kind, snooze_end = ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])
  local card = redis.call('HMGET', key, 'service', 'patient')
  if card[1] ~= service or not card[2] then
    unknown = unknown + 1
  elseif kind == 'accepted' then
    accepted = accepted + 1
  elseif kind == 'no-reason' then
    no_reason = no_reason + 1
  elseif snooze > 0 then
    local skey = prefix .. ':' .. service .. ':' .. card[2]
    local current = tonumber(redis.call('GET', skey))
    if not current or current < snooze_end then
      redis.call('SET', skey, ARGV[3 + 2 * i], 'PX', snooze)
    end
    snoozed = snoozed + 1
  end
end
return {snoozed, unknown, no_reason, accepted}
"""


@dataclass(frozen=True)
class AlertDecision:
    show: bool
    reason: Reason


@dataclass(frozen=True)
class FeedbackEffect:
    """What a batch of feedback did.

    ``snoozed`` counts overrides with a reason on a known card (0 while snoozing is disabled);
    ``unknown_card`` entries whose card this service does not remember (expired, another
    service's, or not a UUID); ``no_reason`` overrides without a reason; ``accepted`` acceptances.
    """

    snoozed: int
    unknown_card: int
    no_reason: int
    accepted: int


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class AlertState:
    def __init__(
        self,
        redis: aioredis.Redis,
        pseudonymiser: Pseudonymiser,
        *,
        repeat_window_s: float,
        snooze_s: float,
        card_memory_s: float = 7 * 86_400,
    ) -> None:
        if min(repeat_window_s, snooze_s, card_memory_s) < 0:
            raise ValueError("alert windows cannot be negative")
        self._pseudonymiser = pseudonymiser
        self._window_ms = _ms(repeat_window_s)
        self._snooze_ms = _ms(snooze_s)
        self._memory_ms = _ms(card_memory_s)
        self._decide = redis.register_script(_DECIDE)
        self._apply = redis.register_script(_APPLY_FEEDBACK)

    async def decide(
        self, service_id: str, patient_id: str, band_rank: int, card_uuid: UUID, now: datetime
    ) -> AlertDecision:
        """Whether to show a card of ``band_rank`` now; a card shown is recorded, atomically."""
        p = self._pseudonymiser.pseudonym("patient", patient_id)
        try:
            raw = await self._decide(
                keys=[f"{ALERT}:{service_id}:{p}", f"{SNOOZE}:{service_id}:{p}", _card(card_uuid)],
                args=[
                    _ms(now.timestamp()),
                    band_rank,
                    str(card_uuid),
                    self._window_ms,
                    self._memory_ms,
                    service_id,
                    p,
                ],
            )
        except RedisError as exc:
            raise DependencyUnavailable("alert state is unavailable: Redis unavailable") from exc
        reason = cast(Reason, raw.decode() if isinstance(raw, bytes) else raw)
        return AlertDecision(show=reason in {"first", "band-rose"}, reason=reason)

    async def apply_feedback(self, service_id: str, entries: list[FeedbackEntry]) -> FeedbackEffect:
        """Snooze the patients whose cards were overridden with a reason, in one round trip."""
        keys: list[str] = []
        args: list[str | int] = [service_id, SNOOZE, self._snooze_ms]
        malformed = 0
        for entry in entries:
            try:
                card = UUID(entry.card)
            except ValueError:
                # Our cards carry UUIDs; anything else was never ours to remember.
                malformed += 1
                continue
            if entry.outcome == "accepted":
                kind = "accepted"
            elif entry.overrideReason is not None and entry.overrideReason.reason is not None:
                kind = "snooze"
            else:
                kind = "no-reason"
            keys.append(_card(card))
            args += [kind, _ms(entry.outcomeTimestamp.timestamp()) + self._snooze_ms]
        counts = [0, 0, 0, 0]
        if keys:
            try:
                counts = [int(n) for n in await self._apply(keys=keys, args=args)]
            except RedisError as exc:
                raise DependencyUnavailable(
                    "feedback could not update alert state: Redis unavailable"
                ) from exc
        snoozed, unknown, no_reason, accepted = counts
        return FeedbackEffect(
            snoozed=snoozed,
            unknown_card=unknown + malformed,
            no_reason=no_reason,
            accepted=accepted,
        )


def _card(card_uuid: UUID) -> str:
    return f"{CARD}:{card_uuid}"
