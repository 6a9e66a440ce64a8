"""Alert discipline in the real Redis: repeats, band rises, snoozes by feedback, pseudonymous keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr

from cds_service.errors import DependencyUnavailable
from cds_service.hooks_models import FeedbackEntry
from cds_service.redis_server import EmbeddedRedis, free_port
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.store.alerts import AlertDecision, AlertState, FeedbackEffect

pytestmark = pytest.mark.integration

T = TypeVar("T")

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SERVICE = "sepsis-patient-view"
OTHER_SERVICE = "sepsis-order-select"
WINDOW = timedelta(hours=1)
SNOOZE = timedelta(hours=4)
PSEUDONYMISER = Pseudonymiser(SecretStr("a" * 40))
LOW, ELEVATED, HIGH = 0, 1, 2


class Harness:
    """One event loop; each :meth:`state` has its own client, as a replica would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self._clients: list[aioredis.Redis] = []

    def state(self, **overrides: float) -> AlertState:
        client = aioredis.Redis.from_url(
            self.url, socket_timeout=1, socket_connect_timeout=0.5, retry_on_timeout=False
        )
        self._clients.append(client)
        options = {"repeat_window_s": WINDOW.total_seconds(), "snooze_s": SNOOZE.total_seconds()}
        return AlertState(client, PSEUDONYMISER, **(options | overrides))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        for client in self._clients:
            self.loop.run_until_complete(client.aclose())
        self.loop.close()


@pytest.fixture
def harness(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Iterator[Harness]:
    redis_client.flushdb()
    h = Harness(redis_server.url)
    yield h
    h.close()


def p(patient: str) -> str:
    return PSEUDONYMISER.pseudonym("patient", patient)


def override(card: UUID | str, at: datetime, *, reason: bool = True) -> FeedbackEntry:
    entry: dict[str, Any] = {"card": str(card), "outcome": "overridden", "outcomeTimestamp": at}
    if reason:
        entry["overrideReason"] = {
            "reason": {"code": "already-treated", "system": "https://example.org/reasons"}
        }
    else:
        entry["overrideReason"] = {"userComment": "not now"}
    return FeedbackEntry.model_validate(entry)


def accepted(card: UUID, at: datetime) -> FeedbackEntry:
    return FeedbackEntry.model_validate(
        {
            "card": str(card),
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": str(uuid4())}],
            "outcomeTimestamp": at,
        }
    )


def test_first_card_is_shown_and_recorded(harness: Harness, redis_client: redis.Redis) -> None:
    state = harness.state()
    card = uuid4()
    decision = harness.run(state.decide(SERVICE, "pt-first", ELEVATED, card, NOW))
    assert decision == AlertDecision(show=True, reason="first")
    alert_key = f"cds:alert:{SERVICE}:{p('pt-first')}"
    assert redis_client.hgetall(alert_key) == {
        b"band": b"1",
        b"shown_at": str(int(NOW.timestamp() * 1000)).encode(),
        b"card": str(card).encode(),
    }
    assert 0 < redis_client.pttl(alert_key) <= WINDOW.total_seconds() * 1000
    card_key = f"cds:alertcard:{card}"
    assert redis_client.hgetall(card_key) == {
        b"service": SERVICE.encode(),
        b"patient": p("pt-first").encode(),
        b"band": b"1",
    }
    assert 6 * 86_400_000 < redis_client.pttl(card_key) <= 7 * 86_400_000


def test_same_or_lower_band_within_the_window_is_a_repeat(harness: Harness) -> None:
    state = harness.state()

    async def scenario() -> list[AlertDecision]:
        return [
            await state.decide(SERVICE, "pt-repeat", HIGH, uuid4(), NOW),
            await state.decide(SERVICE, "pt-repeat", HIGH, uuid4(), NOW + timedelta(minutes=10)),
            await state.decide(
                SERVICE, "pt-repeat", ELEVATED, uuid4(), NOW + timedelta(minutes=20)
            ),
            await state.decide(SERVICE, "pt-repeat", LOW, uuid4(), NOW + timedelta(minutes=30)),
        ]

    assert [d.reason for d in harness.run(scenario())] == ["first", "repeat", "repeat", "repeat"]


def test_a_rise_is_shown_and_restarts_the_window_at_the_new_band(harness: Harness) -> None:
    state = harness.state()
    rise = NOW + timedelta(minutes=50)

    async def scenario() -> list[AlertDecision]:
        return [
            await state.decide(SERVICE, "pt-rise", ELEVATED, uuid4(), NOW),
            await state.decide(SERVICE, "pt-rise", HIGH, uuid4(), rise),
            await state.decide(SERVICE, "pt-rise", HIGH, uuid4(), rise + timedelta(minutes=1)),
            # The first card's window has passed, the rise's has not.
            await state.decide(
                SERVICE, "pt-rise", HIGH, uuid4(), NOW + WINDOW + timedelta(minutes=5)
            ),
            await state.decide(
                SERVICE, "pt-rise", ELEVATED, uuid4(), rise + WINDOW - timedelta(seconds=1)
            ),
            await state.decide(SERVICE, "pt-rise", ELEVATED, uuid4(), rise + WINDOW),
        ]

    decisions = harness.run(scenario())
    assert [(d.show, d.reason) for d in decisions] == [
        (True, "first"),
        (True, "band-rose"),
        (False, "repeat"),
        (False, "repeat"),
        (False, "repeat"),
        (True, "first"),
    ]


def test_the_card_is_shown_again_once_the_window_has_passed(harness: Harness) -> None:
    state = harness.state()

    async def scenario() -> list[AlertDecision]:
        return [
            await state.decide(SERVICE, "pt-window", HIGH, uuid4(), NOW),
            await state.decide(
                SERVICE, "pt-window", HIGH, uuid4(), NOW + WINDOW - timedelta(milliseconds=1)
            ),
            await state.decide(SERVICE, "pt-window", HIGH, uuid4(), NOW + WINDOW),
            # A suppressed card does not extend the window: it runs from the card last shown.
            await state.decide(
                SERVICE, "pt-window", HIGH, uuid4(), NOW + 2 * WINDOW - timedelta(seconds=1)
            ),
            await state.decide(SERVICE, "pt-window", HIGH, uuid4(), NOW + 2 * WINDOW),
        ]

    assert [d.reason for d in harness.run(scenario())] == [
        "first",
        "repeat",
        "first",
        "repeat",
        "first",
    ]


def test_redis_expires_the_window_on_its_own_clock(
    harness: Harness, redis_client: redis.Redis
) -> None:
    state = harness.state(repeat_window_s=0.2)
    assert harness.run(state.decide(SERVICE, "pt-ttl", HIGH, uuid4(), NOW)).reason == "first"
    assert harness.run(state.decide(SERVICE, "pt-ttl", HIGH, uuid4(), NOW)).reason == "repeat"
    time.sleep(0.3)
    assert not redis_client.exists(f"cds:alert:{SERVICE}:{p('pt-ttl')}")
    # The same driven time as before: only the expired key lets the card through.
    assert harness.run(state.decide(SERVICE, "pt-ttl", HIGH, uuid4(), NOW)).reason == "first"


def test_zero_windows_disable_their_rules(harness: Harness, redis_client: redis.Redis) -> None:
    state = harness.state(repeat_window_s=0, snooze_s=0)

    async def scenario() -> tuple[list[AlertDecision], FeedbackEffect, AlertDecision]:
        card = uuid4()
        shown = [
            await state.decide(SERVICE, "pt-zero", HIGH, card, NOW),
            await state.decide(SERVICE, "pt-zero", HIGH, uuid4(), NOW + timedelta(seconds=1)),
        ]
        effect = await state.apply_feedback(SERVICE, [override(card, NOW)])
        return shown, effect, await state.decide(SERVICE, "pt-zero", HIGH, uuid4(), NOW)

    shown, effect, after = harness.run(scenario())
    assert [d.reason for d in shown] == ["first", "first"]
    assert effect == FeedbackEffect(snoozed=0, unknown_card=0, no_reason=0, accepted=0)
    assert after.show
    assert redis_client.keys("cds:alert:*") == []
    assert redis_client.keys("cds:snooze:*") == []


def test_an_override_with_a_reason_snoozes_even_a_higher_band(
    harness: Harness, redis_client: redis.Redis
) -> None:
    state = harness.state()
    card = uuid4()
    overridden_at = NOW + timedelta(minutes=5)

    async def scenario() -> tuple[FeedbackEffect, list[AlertDecision]]:
        await state.decide(SERVICE, "pt-snooze", ELEVATED, card, NOW)
        effect = await state.apply_feedback(SERVICE, [override(card, overridden_at)])
        return effect, [
            await state.decide(SERVICE, "pt-snooze", HIGH, uuid4(), NOW + timedelta(minutes=10)),
            await state.decide(
                SERVICE, "pt-snooze", HIGH, uuid4(), overridden_at + SNOOZE - timedelta(seconds=1)
            ),
            await state.decide(SERVICE, "pt-snooze", HIGH, uuid4(), overridden_at + SNOOZE),
        ]

    effect, decisions = harness.run(scenario())
    assert effect == FeedbackEffect(snoozed=1, unknown_card=0, no_reason=0, accepted=0)
    assert [(d.show, d.reason) for d in decisions] == [
        (False, "snoozed"),
        (False, "snoozed"),
        (True, "first"),
    ]
    snooze_key = f"cds:snooze:{SERVICE}:{p('pt-snooze')}"
    assert (
        redis_client.get(snooze_key)
        == str(int((overridden_at + SNOOZE).timestamp() * 1000)).encode()
    )
    assert 0 < redis_client.pttl(snooze_key) <= SNOOZE.total_seconds() * 1000


def test_resent_older_feedback_does_not_shorten_a_snooze(harness: Harness) -> None:
    state = harness.state()
    card = uuid4()

    async def scenario() -> AlertDecision:
        await state.decide(SERVICE, "pt-resent", HIGH, card, NOW)
        await state.apply_feedback(SERVICE, [override(card, NOW + timedelta(hours=2))])
        await state.apply_feedback(SERVICE, [override(card, NOW)])
        return await state.decide(SERVICE, "pt-resent", HIGH, uuid4(), NOW + timedelta(hours=5))

    assert harness.run(scenario()) == AlertDecision(show=False, reason="snoozed")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (lambda c: override(c, NOW, reason=False), FeedbackEffect(0, 0, 1, 0)),
        (lambda c: accepted(c, NOW), FeedbackEffect(0, 0, 0, 1)),
    ],
    ids=["overridden-without-reason", "accepted"],
)
def test_feedback_that_does_not_snooze(
    entry: Any, expected: FeedbackEffect, harness: Harness, redis_client: redis.Redis
) -> None:
    state = harness.state()
    card = uuid4()

    async def scenario() -> tuple[FeedbackEffect, AlertDecision]:
        await state.decide(SERVICE, "pt-no-snooze", ELEVATED, card, NOW)
        effect = await state.apply_feedback(SERVICE, [entry(card)])
        return effect, await state.decide(
            SERVICE, "pt-no-snooze", HIGH, uuid4(), NOW + timedelta(minutes=1)
        )

    effect, after = harness.run(scenario())
    assert effect == expected
    assert after == AlertDecision(show=True, reason="band-rose")
    assert redis_client.keys("cds:snooze:*") == []


def test_unknown_and_foreign_cards_are_counted_not_snoozed(
    harness: Harness, redis_client: redis.Redis
) -> None:
    state = harness.state()
    forgetful = harness.state(card_memory_s=0.2)
    card, forgotten = uuid4(), uuid4()

    async def scenario() -> tuple[FeedbackEffect, FeedbackEffect, list[AlertDecision]]:
        await state.decide(SERVICE, "pt-foreign", ELEVATED, card, NOW)
        await forgetful.decide(SERVICE, "pt-forgotten", ELEVATED, forgotten, NOW)
        await asyncio.sleep(0.3)
        foreign = await state.apply_feedback(OTHER_SERVICE, [override(card, NOW)])
        unknown = await state.apply_feedback(
            SERVICE,
            [override(uuid4(), NOW), override("not-a-uuid", NOW), override(forgotten, NOW)],
        )
        return (
            foreign,
            unknown,
            [
                await state.decide(
                    SERVICE, "pt-foreign", HIGH, uuid4(), NOW + timedelta(minutes=1)
                ),
                await state.decide(
                    OTHER_SERVICE, "pt-foreign", HIGH, uuid4(), NOW + timedelta(minutes=1)
                ),
                await state.decide(
                    SERVICE, "pt-forgotten", HIGH, uuid4(), NOW + timedelta(minutes=1)
                ),
            ],
        )

    foreign, unknown, after = harness.run(scenario())
    assert foreign == FeedbackEffect(snoozed=0, unknown_card=1, no_reason=0, accepted=0)
    assert unknown == FeedbackEffect(snoozed=0, unknown_card=3, no_reason=0, accepted=0)
    assert [d.reason for d in after] == ["band-rose", "first", "band-rose"]
    assert redis_client.keys("cds:snooze:*") == []


def test_one_batch_counts_every_kind(harness: Harness) -> None:
    state = harness.state()
    cards = {name: uuid4() for name in ("a", "b", "c")}

    async def scenario() -> FeedbackEffect:
        for name, card in cards.items():
            await state.decide(SERVICE, f"pt-batch-{name}", HIGH, card, NOW)
        return await state.apply_feedback(
            SERVICE,
            [
                override(cards["a"], NOW),
                override(cards["b"], NOW, reason=False),
                accepted(cards["c"], NOW),
                override(uuid4(), NOW),
            ],
        )

    assert harness.run(scenario()) == FeedbackEffect(
        snoozed=1, unknown_card=1, no_reason=1, accepted=1
    )


def test_an_override_for_one_patient_does_not_snooze_another(harness: Harness) -> None:
    state = harness.state()
    card_x = uuid4()

    async def scenario() -> list[AlertDecision]:
        await state.decide(SERVICE, "pt-x", ELEVATED, card_x, NOW)
        await state.decide(SERVICE, "pt-y", ELEVATED, uuid4(), NOW)
        await state.apply_feedback(SERVICE, [override(card_x, NOW)])
        later = NOW + timedelta(minutes=1)
        return [
            await state.decide(SERVICE, "pt-x", HIGH, uuid4(), later),
            await state.decide(SERVICE, "pt-y", HIGH, uuid4(), later),
        ]

    assert [d.reason for d in harness.run(scenario())] == ["snoozed", "band-rose"]


def test_the_raw_patient_id_is_never_stored(harness: Harness, redis_client: redis.Redis) -> None:
    patient = "MRN-0042-raw-identifier"
    state = harness.state()
    card = uuid4()

    async def scenario() -> None:
        await state.decide(SERVICE, patient, ELEVATED, card, NOW)
        await state.decide(SERVICE, patient, HIGH, uuid4(), NOW + timedelta(minutes=1))
        await state.apply_feedback(SERVICE, [override(card, NOW)])

    harness.run(scenario())
    keys = list(redis_client.scan_iter(count=1000))
    stored: list[bytes | str | None] = list(keys)
    for key in keys:
        kind = redis_client.type(key)
        if kind == b"hash":
            for field, value in redis_client.hgetall(key).items():
                stored += [field, value]
        else:
            assert kind == b"string", key
            stored.append(redis_client.get(key))
    assert all(isinstance(item, bytes) for item in stored)
    blob = b"\n".join(item for item in stored if isinstance(item, bytes))
    # The alert hash, the snooze and both cards' hashes: everything written was read.
    assert len(keys) == 4
    assert p(patient).encode() in blob
    assert patient.encode() not in blob
    assert b"MRN-0042" not in blob


def test_concurrent_replicas_show_the_card_once(
    harness: Harness, redis_client: redis.Redis
) -> None:
    replicas = [harness.state(), harness.state()]
    cards = [uuid4() for _ in range(20)]

    async def scenario() -> list[AlertDecision]:
        return await asyncio.gather(
            *(
                replicas[i % 2].decide(SERVICE, "pt-race", HIGH, card, NOW)
                for i, card in enumerate(cards)
            )
        )

    decisions = harness.run(scenario())
    shown = [card for card, d in zip(cards, decisions, strict=True) if d.show]
    assert len(shown) == 1
    assert sorted(d.reason for d in decisions) == ["first"] + ["repeat"] * 19
    # Only the card shown is remembered, so only its feedback can snooze.
    assert redis_client.keys("cds:alertcard:*") == [f"cds:alertcard:{shown[0]}".encode()]


def test_unreachable_redis_raises_dependency_unavailable() -> None:
    h = Harness(f"redis://127.0.0.1:{free_port()}/0")
    try:
        state = h.state()
        with pytest.raises(DependencyUnavailable):
            h.run(state.decide(SERVICE, "pt-down", HIGH, uuid4(), NOW))
        with pytest.raises(DependencyUnavailable):
            h.run(state.apply_feedback(SERVICE, [override(uuid4(), NOW)]))
    finally:
        h.close()
