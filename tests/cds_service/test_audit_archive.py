"""The audit archive: Redis streams copied to daily JSONL files, once each, durable, sealed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from cds_service.audit_archive import AuditArchive
from cds_service.lifecycle.audit import CALLS_STREAM, LIFECYCLE_STREAM
from cds_service.redis_server import EmbeddedRedis, free_port

DAY_MS = 24 * 3600 * 1000
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
TODAY_MS = int(NOW.timestamp() * 1000)
KEEP = {"lifecycle": timedelta(days=400), "calls": timedelta(days=30)}


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as started:
        yield started


@pytest.fixture
def db(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()


def _add(db: redis.Redis, stream: str, ms: int, **event: object) -> str:
    return db.xadd(stream, {"e": json.dumps(event)}, id=f"{ms}-0").decode()


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_event_is_archived_once_by_day_and_finished_days_are_sealed(
    db: redis.Redis, tmp_path: Path
) -> None:
    yesterday = [_add(db, CALLS_STREAM, TODAY_MS - DAY_MS + i, card="shown") for i in range(3)]
    today = [_add(db, CALLS_STREAM, TODAY_MS + i, card="suppressed:repeat") for i in range(2)]
    change = _add(db, LIFECYCLE_STREAM, TODAY_MS, action="rollback", actor="drift-monitor")
    archive = AuditArchive(db, tmp_path, timedelta(days=3650), KEEP)

    first = archive.run(NOW)
    assert (first["calls"].written, first["lifecycle"].written) == (5, 1)
    old = tmp_path / "calls" / "2026-12-01.jsonl"
    new = tmp_path / "calls" / "2026-12-02.jsonl"
    assert [line["id"] for line in _lines(old)] == yesterday
    assert [line["id"] for line in _lines(new)] == today
    assert _lines(new)[0]["event"] == {"card": "suppressed:repeat"}
    assert _lines(tmp_path / "lifecycle" / "2026-12-02.jsonl")[0]["id"] == change
    assert stat.S_IMODE(old.stat().st_mode) == 0o440  # a finished day is read-only
    assert os.access(new, os.W_OK)

    # A second run copies nothing again; a new event is appended after the others.
    assert archive.run(NOW)["calls"].written == 0
    later = _add(db, CALLS_STREAM, TODAY_MS + 60_000, card="shown")
    assert archive.run(NOW)["calls"].written == 1
    assert [line["id"] for line in _lines(new)] == [*today, later]


def test_a_line_cut_short_by_a_crash_does_not_lose_or_repeat_events(
    db: redis.Redis, tmp_path: Path
) -> None:
    ids = [_add(db, CALLS_STREAM, TODAY_MS + i, n=i) for i in range(4)]
    archive = AuditArchive(db, tmp_path, timedelta(days=3650), KEEP)
    archive.run(NOW)
    path = tmp_path / "calls" / "2026-12-02.jsonl"
    text = path.read_text().splitlines()
    # The process died while writing the last line: only half of it reached the disk.
    path.write_text("\n".join(text[:2]) + "\n" + text[2][:10])
    archive.run(NOW)
    assert [line["id"] for line in _lines(path)] == ids


def test_old_files_go_after_the_archive_retention(db: redis.Redis, tmp_path: Path) -> None:
    _add(db, CALLS_STREAM, TODAY_MS - 20 * DAY_MS, card="shown")
    _add(db, CALLS_STREAM, TODAY_MS, card="shown")
    AuditArchive(db, tmp_path, timedelta(days=10), KEEP).run(NOW)
    assert sorted(p.name for p in (tmp_path / "calls").iterdir()) == ["2026-12-02.jsonl"]


def test_an_archive_older_than_redis_keeps_events_reports_a_gap(
    db: redis.Redis, tmp_path: Path
) -> None:
    _add(db, CALLS_STREAM, TODAY_MS - 40 * DAY_MS, card="shown")
    archive = AuditArchive(db, tmp_path, timedelta(days=3650), KEEP)
    assert archive.run(NOW)["calls"].gap is False
    db.delete(CALLS_STREAM)  # Redis trimmed it (30 days) while the job was not running
    _add(db, CALLS_STREAM, TODAY_MS, card="shown")
    assert archive.run(NOW)["calls"].gap is True


def test_the_command_runs_once_and_fails_without_redis(
    server: EmbeddedRedis, db: redis.Redis, tmp_path: Path
) -> None:
    _add(db, LIFECYCLE_STREAM, int(datetime.now(UTC).timestamp() * 1000), action="stop")
    env = {
        **os.environ,
        "CDS_ENVIRONMENT": "development",
        "CDS_REDIS_URL": server.url,
        "CDS_LIFECYCLE__ARCHIVE_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "cds_service.audit_archive"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["lifecycle"]["written"] == 1
    down = env | {"CDS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    failed = subprocess.run(
        command, env=down, capture_output=True, text=True, timeout=60, check=False
    )
    assert failed.returncode == 1 and "Redis unavailable" in failed.stderr
