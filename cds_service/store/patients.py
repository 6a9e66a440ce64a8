"""What the workers keep per census patient in Redis, for rescoring and for hook calls.

Layout (``p`` = keyed pseudonym of the patient id, as in the timeline):

* ``cds:census`` — sorted set of ``p``, score = when the census last saw the stay (epoch s);
* ``cds:pt:{p}`` — hash: ``id`` (the FHIR patient id, **Fernet-encrypted**: write-back needs the
  real id, and nothing in Redis may hold it in plain text), ``ctx`` (encrypted JSON: the stay's
  ICU admission, unit, age, sex, encounter id — dates and ids are identifying), ``wm`` (the
  Observation watermark, a FHIR instant), ``refreshed`` (epoch s of the last successful refresh),
  ``newest`` (epoch s of the newest observation held), ``risk``, ``above`` (1 when the last
  write-back said "at or above the alert level"), ``version``;
* ``cds:feat:{p}`` — the current feature vector, float32 bytes (no identifier in it).

Every key expires with the timeline's retention when the patient leaves the census.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import orjson
import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken
from redis.exceptions import RedisError

from cds_service.errors import DependencyUnavailable
from cds_service.security.pseudonym import Pseudonymiser

CENSUS = "cds:census"


@dataclass(frozen=True)
class StayContext:
    """What scoring needs beyond the timeline, cached by the census refresh."""

    encounter_id: str | None
    icu_start: str
    unit: Literal["MICU", "SICU"] | None
    hospital_to_icu_hours: float | None
    age_years: float | None = None
    sex: Literal["female", "male"] | None = None

    @property
    def icu_start_time(self) -> datetime:
        return datetime.fromisoformat(self.icu_start)


@dataclass(frozen=True)
class CachedPatient:
    pseudonym: str
    patient_id: str
    context: StayContext
    watermark: datetime | None
    refreshed: float | None
    above: bool
    #: scored before: a first score above the alert level is no crossing the service saw
    scored: bool = False


class PatientCache:
    def __init__(
        self,
        redis: aioredis.Redis,
        pseudonymiser: Pseudonymiser,
        cipher: Fernet | None,
        retention_s: int,
    ) -> None:
        self._redis = redis
        self._pseudonymiser = pseudonymiser
        self._cipher = cipher
        self._retention_s = retention_s

    def pseudonym(self, patient_id: str) -> str:
        return self._pseudonymiser.pseudonym("patient", patient_id)

    def _need_cipher(self) -> Fernet:
        if self._cipher is None:
            raise RuntimeError("CDS_WORKER__IDENTIFIER_KEY is needed to cache census patients")
        return self._cipher

    async def register(self, patient_id: str, context: StayContext, now: float) -> str:
        """Record a census stay; returns the patient's pseudonym."""
        cipher = self._need_cipher()
        p = self.pseudonym(patient_id)
        key = f"cds:pt:{p}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(CENSUS, {p: now})
                pipe.hset(
                    key,
                    mapping={
                        "id": cipher.encrypt(patient_id.encode()),
                        "ctx": cipher.encrypt(orjson.dumps(asdict(context))),
                    },
                )
                pipe.expire(key, self._retention_s)
                await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc
        return p

    async def get(self, p: str) -> CachedPatient | None:
        try:
            raw = await self._redis.hgetall(f"cds:pt:{p}")
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc
        if not raw or b"id" not in raw or b"ctx" not in raw:
            return None
        cipher = self._need_cipher()
        try:
            patient_id = cipher.decrypt(raw[b"id"]).decode()
            context = StayContext(**orjson.loads(cipher.decrypt(raw[b"ctx"])))
        except InvalidToken:
            # A rotated key: the entry is useless, the next census registers it again.
            return None
        watermark = raw.get(b"wm")
        refreshed = raw.get(b"refreshed")
        return CachedPatient(
            pseudonym=p,
            patient_id=patient_id,
            context=context,
            watermark=datetime.fromisoformat(cast(bytes, watermark).decode())
            if watermark
            else None,
            refreshed=float(refreshed) if refreshed else None,
            above=raw.get(b"above") == b"1",
            scored=b"risk" in raw,
        )

    async def update_context(self, p: str, context: StayContext) -> None:
        cipher = self._need_cipher()
        try:
            await self._redis.hset(
                f"cds:pt:{p}", "ctx", cipher.encrypt(orjson.dumps(asdict(context)))
            )
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc

    async def save_refresh(
        self,
        p: str,
        watermark: datetime | None,
        features: npt.NDArray[np.float32] | None,
        newest: datetime | None,
        now: float,
    ) -> None:
        """After a successful merge: the new watermark, the features, the refresh time."""
        mapping: dict[str | bytes, str | bytes | float] = {"refreshed": now}
        if watermark is not None:
            mapping["wm"] = watermark.astimezone(UTC).isoformat()
        if newest is not None:
            mapping["newest"] = newest.timestamp()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(f"cds:pt:{p}", mapping=cast(Any, mapping))
                pipe.expire(f"cds:pt:{p}", self._retention_s)
                if features is not None:
                    pipe.set(
                        f"cds:feat:{p}",
                        features.astype(np.float32).tobytes(),
                        ex=self._retention_s,
                    )
                await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc

    async def save_score(self, p: str, risk: float, version: str, above: bool | None) -> None:
        mapping: dict[str | bytes, str | bytes | float] = {"risk": risk, "version": version}
        if above is not None:
            mapping["above"] = "1" if above else "0"
        try:
            await self._redis.hset(f"cds:pt:{p}", mapping=cast(Any, mapping))
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc

    async def census(self, seen_since: float) -> list[str]:
        """Pseudonyms the census saw since ``seen_since``; older entries are dropped."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(CENSUS, "-inf", f"({seen_since}")
                pipe.zrange(CENSUS, 0, -1)
                _, members = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc
        return [m.decode() for m in members]

    async def features(self, pseudonyms: list[str]) -> dict[str, npt.NDArray[np.float32]]:
        if not pseudonyms:
            return {}
        try:
            blobs = await self._redis.mget([f"cds:feat:{p}" for p in pseudonyms])
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc
        return {
            p: np.frombuffer(cast(bytes, blob), dtype=np.float32)
            for p, blob in zip(pseudonyms, blobs, strict=True)
            if blob is not None
        }

    async def fresh_context(self, patient_id: str, max_age_s: float) -> StayContext | None:
        """The cached stay of a patient the workers refreshed within ``max_age_s``, else None."""
        if self._cipher is None or max_age_s <= 0:
            return None
        try:
            cached = await self.get(self.pseudonym(patient_id))
        except DependencyUnavailable:
            return None
        if cached is None or cached.refreshed is None or cached.context.age_years is None:
            return None
        return cached.context if time.time() - cached.refreshed <= max_age_s else None

    async def newest_data(self, pseudonyms: list[str]) -> list[float]:
        """The age in seconds of each patient's newest observation (refresh lag)."""
        if not pseudonyms:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in pseudonyms:
                    pipe.hget(f"cds:pt:{p}", "newest")
                values = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("the patient cache is unavailable") from exc
        now = time.time()
        return [now - float(v) for v in values if v]
