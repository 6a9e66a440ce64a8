"""``python -m cds_service.audit_archive``: append the audit streams to daily files, once.

Redis keeps the audit trail for its retention (30 days of scored calls by default); a hospital
keeps its audit for years. Run every few minutes (the chart's CronJob), this copies every stream
entry not yet archived to ``<archive_dir>/<stream>/<YYYY-MM-DD>.jsonl``, one JSON object a line
(``{"id": <stream id>, "event": {...}}``), flushed and fsynced before it returns. The files are
the cursor: the last line of the newest file says where to go on, so a run killed half-way
writes nothing twice. A finished day (UTC) is made read-only; files older than
``archive_retention_days`` are deleted. Nothing is ever rewritten.

If the archive fell further behind than Redis keeps events (the job stopped for longer than the
retention), events may have been trimmed before they were copied: the run says so and exits 3.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast

import redis
from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cds_service.lifecycle.audit import CALLS_STREAM, LIFECYCLE_STREAM
from cds_service.settings import LifecycleSettings

log = logging.getLogger(__name__)

STREAMS = {"lifecycle": LIFECYCLE_STREAM, "calls": CALLS_STREAM}
BATCH = 1000
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP


class ArchiveSettings(BaseSettings):
    """The archive job's own settings: Redis and the lifecycle group, nothing else. The job
    needs no pseudonymisation key or EHR trust, so its pod is given none."""

    model_config = SettingsConfigDict(env_prefix="CDS_", env_nested_delimiter="__", extra="ignore")
    redis_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CDS_REDIS_URL", "REDIS_URL")
    )
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)


class StreamArchived(BaseModel):
    written: int
    last_id: str | None
    #: the archive was older than Redis's retention: trimmed events were never copied
    gap: bool


def _day(entry_id: str) -> date:
    return datetime.fromtimestamp(int(entry_id.split("-", maxsplit=1)[0]) / 1000, UTC).date()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class AuditArchive:
    def __init__(
        self,
        client: redis.Redis,
        root: Path,
        retention: timedelta,
        redis_retention: dict[str, timedelta],
    ) -> None:
        self._redis = client
        self.root = root
        self.retention = retention
        self._redis_retention = redis_retention

    def _files(self, name: str) -> list[Path]:
        return sorted((self.root / name).glob("*.jsonl"))

    def last_id(self, name: str) -> str | None:
        """The stream id of the newest archived line (the files are the cursor)."""
        for path in reversed(self._files(name)):
            lines = [line for line in path.read_bytes().splitlines() if line.strip()]
            for line in reversed(lines):
                try:
                    return str(json.loads(line)["id"])
                except (ValueError, KeyError):
                    continue  # a line cut short by a crash: the one before it is the cursor
        return None

    def _entries(self, stream: str, after: str | None) -> Iterator[tuple[str, bytes]]:
        start = "-" if after is None else f"({after}"
        while True:
            batch = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self._redis.xrange(stream, min=start, max="+", count=BATCH),
            )
            if not batch:
                return
            for entry_id, fields in batch:
                yield entry_id.decode(), fields[b"e"]
            start = f"({batch[-1][0].decode()}"

    def archive(self, name: str, now: datetime) -> StreamArchived:
        stream = STREAMS[name]
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        after = self.last_id(name)
        gap = self._gap(stream, after, now - self._redis_retention[name])
        written = 0
        last = after
        handle: BinaryIO | None = None
        day: date | None = None
        try:
            for entry_id, payload in self._entries(stream, after):
                if after is not None and _id_key(entry_id) <= _id_key(after):
                    continue
                entry_day = _day(entry_id)
                if entry_day != day or handle is None:
                    if handle is not None:
                        _close(handle)
                    day = entry_day
                    path = folder / f"{day.isoformat()}.jsonl"
                    if path.exists() and not os.access(path, os.W_OK):
                        path.chmod(path.stat().st_mode | stat.S_IWUSR)  # a late event (clock)
                    _drop_partial_line(path)
                    handle = path.open("ab")
                line = b'{"id": "%s", "event": %s}\n' % (entry_id.encode(), payload)
                handle.write(line)
                written += 1
                last = entry_id
        finally:
            if handle is not None:
                _close(handle)
        self._seal_and_expire(folder, now.date())
        return StreamArchived(written=written, last_id=last, gap=gap)

    def _gap(self, stream: str, after: str | None, kept_since: datetime) -> bool:
        """Whether events newer than the archive may have been trimmed before being copied: the
        archive ends before what Redis still keeps, and Redis holds nothing older than that. (A
        stream quiet for longer than its retention reads the same: a warning, not a proof.)"""
        if after is None or _day(after) >= kept_since.date():
            return False
        first = cast(list[tuple[bytes, object]], self._redis.xrange(stream, count=1))
        return bool(first) and _id_key(first[0][0].decode()) > _id_key(after)

    def _seal_and_expire(self, folder: Path, today: date) -> None:
        oldest = today - self.retention
        for path in folder.glob("*.jsonl"):
            try:
                day = date.fromisoformat(path.stem)
            except ValueError:
                continue
            if day < oldest:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
                path.unlink()
            elif day < today:
                path.chmod(READ_ONLY)

    def run(self, now: datetime | None = None) -> dict[str, StreamArchived]:
        now = now or datetime.now(UTC)
        return {name: self.archive(name, now) for name in STREAMS}


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that a killed run left without its newline: it was never complete, and
    the events it held are copied again after it (the cursor is the last complete line)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def _close(handle: BinaryIO) -> None:
    """Durable before the next run may take this file's last line as its cursor."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ArchiveSettings()
    lifecycle = settings.lifecycle
    if settings.redis_url is None or lifecycle.archive_dir is None:
        log.error("set REDIS_URL and CDS_LIFECYCLE__ARCHIVE_DIR")
        return 2
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=10, socket_connect_timeout=5
    )
    archive = AuditArchive(
        client,
        lifecycle.archive_dir,
        timedelta(days=lifecycle.archive_retention_days),
        {
            "lifecycle": timedelta(days=lifecycle.audit_retention_days),
            "calls": timedelta(days=lifecycle.call_audit_retention_days),
        },
    )
    try:
        results = archive.run()
    except redis.RedisError as exc:
        log.error("audit not archived: Redis unavailable (%s)", type(exc).__name__)
        return 1
    finally:
        client.close()
    print(json.dumps({name: r.model_dump() for name, r in results.items()}))
    if any(r.gap for r in results.values()):
        log.error("the archive was older than Redis keeps events: some were never archived")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
