"""Open-loop load on ``sepsis-patient-view``: the service and Redis on core 0, the client on core 1.

    .venv/bin/python bench/sepsis_load.py [--rates 50 200 300 400] [--duration 20] [--json out.json]

A real redis-server and the API (``cds-service serve``, production settings) run pinned to core 0;
this process pins itself to core 1 and sends pre-minted, pre-serialised hook calls at fixed rates
over a pool of keep-alive HTTP/1.1 connections. Every call is a new ICU patient with 150
Observations, so each one pays for a full timeline merge and a first alert decision. Latency runs
from each call's *scheduled* send time, so queueing in the server or in the client's pool counts
(no coordinated omission). The floor, on core 0 against the same redis-server: ``orjson.loads`` of
the same body plus one pipelined round trip with as many commands as a hook call sends. The GC
step repeats one rate with ``CDS_GC_FREEZE=false`` in a fresh service process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from cds_service.redis_server import EmbeddedRedis, free_port
from cds_service.security.dev_keys import DEV_ISSUER, DevKeys, ensure_dev_keys
from cds_service.settings import TrustedIssuer

SERVICE = "sepsis-patient-view"
SERVER_CORE, CLIENT_CORE = 0, 1
HOST = "127.0.0.1"
SPIN_S = 0.0015  # the client core is ours: spin the last 1.5 ms before a send
TOKEN_LIFETIME_S = 1800  # the whole run, with room; the service accepts up to 3600 s
PATIENT, HOOK_INSTANCE = b"@PATIENT@", b"@HOOK@"
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# Hourly vital signs for 18 h, labs every 3 h: 18 x 7 + 6 x 4 = 150 Observations per call.
# (LOINC, UCUM unit, value at the oldest hour, change by the newest hour at full severity)
VITAL_SIGNS = (
    ("8867-4", "/min", 82.0, 48.0),  # heart rate
    ("9279-1", "/min", 15.0, 15.0),  # respiratory rate
    ("8310-5", "Cel", 36.9, 2.4),  # body temperature
    ("59408-5", "%", 97.0, -8.0),  # SpO2 by pulse oximetry
    ("8480-6", "mm[Hg]", 124.0, -40.0),  # systolic
    ("8462-4", "mm[Hg]", 72.0, -26.0),  # diastolic
    ("8478-0", "mm[Hg]", 89.0, -31.0),  # mean arterial pressure
)
LABS = (
    ("2524-7", "mmol/L", 1.1, 3.6),  # lactate
    ("6690-2", "10*3/uL", 8.0, 11.0),  # leukocytes
    ("2160-0", "mg/dL", 0.9, 1.7),  # creatinine
    ("777-3", "10*3/uL", 240.0, -150.0),  # platelets
)
HOURS, LAB_EVERY = 18, 3
OBSERVATIONS = HOURS * len(VITAL_SIGNS) + HOURS // LAB_EVERY * len(LABS)
assert OBSERVATIONS == 150  # the size the README quotes


# ----------------------------------------------------------------------------- requests


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entry = [{"resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entry), "entry": entry}


def patient_template(profile: int, severity: float, now: datetime) -> bytes:
    """One ICU patient's hook call, the patient id and hookInstance left as placeholders.

    Values drift from normal towards sepsis over the 18 hours in proportion to ``severity``
    (0: stable, 1: tachycardic, febrile, hypotensive, lactate 4.7 mmol/L), with some noise.
    """
    rng = random.Random(profile)  # noqa: S311 - reproducible test values, not secrets
    patient = PATIENT.decode()
    newest = now - timedelta(minutes=30)
    observations: dict[str, list[dict[str, Any]]] = {"vital-signs": [], "laboratory": []}
    for hour in range(HOURS):
        progress = hour / (HOURS - 1)
        rows = [("vital-signs", row) for row in VITAL_SIGNS]
        if hour % LAB_EVERY == LAB_EVERY - 1:
            rows += [("laboratory", row) for row in LABS]
        for category, (code, unit, start, change) in rows:
            value = start + severity * change * progress
            value *= 1 + rng.gauss(0, 0.02)
            value = min(value, 100.0) if unit == "%" else value
            observations[category].append(
                {
                    "resourceType": "Observation",
                    "id": f"{patient}-{code}-{hour}",
                    "status": "final",
                    "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
                    "code": {"coding": [{"system": LOINC, "code": code}]},
                    "subject": {"reference": f"Patient/{patient}"},
                    "effectiveDateTime": _stamp(newest - timedelta(hours=HOURS - 1 - hour)),
                    "valueQuantity": {
                        "value": round(value, 2),
                        "unit": unit,
                        "system": UCUM,
                        "code": unit,
                    },
                }
            )
    encounter = {
        "resourceType": "Encounter",
        "id": f"enc-{patient}",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": _stamp(now - timedelta(hours=26))},
        "location": [
            {
                "location": {"display": "Medical Intensive Care Unit (MICU)"},
                "status": "active",
                "period": {"start": _stamp(now - timedelta(hours=20))},
            }
        ],
    }
    body = {
        "hook": "patient-view",
        "hookInstance": HOOK_INSTANCE.decode(),
        "context": {
            "userId": "Practitioner/bench",
            "patientId": patient,
            "encounterId": f"enc-{patient}",
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": patient,
                "gender": "female" if profile % 2 else "male",
                "birthDate": f"{1940 + profile % 45}-06-15",
            },
            "encounter": _bundle([encounter]),
            "vitals": _bundle(observations["vital-signs"]),
            "labs": _bundle(observations["laboratory"]),
        },
    }
    return orjson.dumps(body)


class Requests:
    """Hook calls as ready-to-write HTTP/1.1 requests, one new patient each."""

    def __init__(self, port: int, tokens: list[str], profiles: int) -> None:
        self.path = f"/cds-services/{SERVICE}"
        self._host = f"{HOST}:{port}"
        self._tokens = iter(tokens)
        self._profiles = profiles
        self._next_patient = 0
        self._templates: list[bytes] = []

    def refresh(self) -> None:
        """Templates timed to now: the newest vital sign half an hour old (under the 6 h limit)."""
        now = datetime.now(UTC)
        count = self._profiles
        # Squared, so that mild courses are commoner: 55 % of calls get a card, 15 % critical.
        self._templates = [
            patient_template(k, (k / max(count - 1, 1)) ** 2, now) for k in range(count)
        ]

    def body(self, patient: int) -> bytes:
        template = self._templates[patient % len(self._templates)]
        body = template.replace(PATIENT, f"bench-{patient:06d}".encode())
        return body.replace(HOOK_INSTANCE, str(uuid.uuid4()).encode())

    def take(self, count: int) -> list[bytes]:
        built = []
        for _ in range(count):
            body = self.body(self._next_patient)
            self._next_patient += 1
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self._host}\r\n"
                f"Authorization: Bearer {next(self._tokens)}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            built.append(head.encode() + body)
        return built


def _mint(job: tuple[DevKeys, str, int]) -> list[str]:
    keys, audience, count = job
    return [keys.mint(audience, lifetime_s=TOKEN_LIFETIME_S) for _ in range(count)]


def mint_tokens(keys: DevKeys, audience: str, count: int) -> list[str]:
    """ES384 tokens with distinct ``jti``, minted on both cores before anything is pinned."""
    chunks = [(keys, audience, min(500, count - i)) for i in range(0, count, 500)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [token for chunk in pool.map(_mint, chunks) for token in chunk]


# ----------------------------------------------------------------------------- open-loop client


def _head(raw: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and whether the server will close, from a response head."""
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    if "content-length" not in headers:
        raise ValueError("response without Content-Length")
    return status, int(headers["content-length"]), headers.get("connection") == "close"


def _cards(payload: bytes) -> int | None:
    try:
        answer = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    cards = answer.get("cards") if isinstance(answer, dict) else None
    return len(cards) if isinstance(cards, list) else None


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class OpenLoop:
    """Send requests at a fixed rate whatever the answers do, over ``pool`` keep-alive
    connections; a call waits in the client while every connection is busy, and that wait counts.
    """

    def __init__(self, port: int, requests: list[bytes], rate: float, pool: int) -> None:
        self._port, self._requests, self._rate, self._pool = port, requests, rate, pool
        count = len(requests)
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._scheduled = [0.0] * count
        self._lag = [0.0] * count
        self._done = [math.inf] * count
        self._status = [0] * count  # 0: never answered; -1: connection error; -2: no "cards"
        self._cards = [0] * count
        self._answered = 0
        self._finished = asyncio.Event()

    async def _connect(self) -> Connection:
        return await asyncio.open_connection(HOST, self._port, limit=1 << 20)

    async def _call(self, conn: Connection, i: int) -> Connection:
        reader, writer = conn
        if reader.at_eof():  # uvicorn closes a connection idle for 5 s
            writer.close()
            reader, writer = await self._connect()
        writer.write(self._requests[i])
        await writer.drain()
        code, length, close = _head(await reader.readuntil(b"\r\n\r\n"))
        payload = await reader.readexactly(length)
        self._done[i] = asyncio.get_running_loop().time()
        found = _cards(payload)
        self._status[i], self._cards[i] = (code, found) if found is not None else (-2, 0)
        if close:
            writer.close()
            return await self._connect()
        return reader, writer

    async def _worker(self, conn: Connection) -> None:
        try:
            while True:
                i = await self._queue.get()
                try:
                    conn = await self._call(conn, i)
                except (
                    OSError,
                    ValueError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                ):
                    self._status[i] = -1
                    self._done[i] = asyncio.get_running_loop().time()
                    conn[1].close()
                    conn = await self._connect()
                self._answered += 1
                if self._answered == len(self._requests):
                    self._finished.set()
        finally:
            conn[1].close()

    async def run(self, grace_s: float) -> dict[str, Any]:
        """Send everything, then wait for answers until ``grace_s`` after the last send."""
        loop = asyncio.get_running_loop()
        conns = [await self._connect() for _ in range(self._pool)]
        workers = [asyncio.create_task(self._worker(conn)) for conn in conns]
        start = loop.time() + 0.1
        for i in range(len(self._requests)):
            self._scheduled[i] = start + i / self._rate
            delay = self._scheduled[i] - loop.time()
            # epoll waits in whole milliseconds: sleep short, then yield until the time comes.
            if delay > SPIN_S:
                await asyncio.sleep(delay - SPIN_S)
            while loop.time() < self._scheduled[i]:  # noqa: ASYNC110 - a deadline, not an event
                await asyncio.sleep(0)
            self._lag[i] = loop.time() - self._scheduled[i]
            self._queue.put_nowait(i)
        with contextlib.suppress(TimeoutError):
            wait = self._scheduled[-1] + grace_s - loop.time()
            await asyncio.wait_for(self._finished.wait(), timeout=wait)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return self._summary(start)

    def _summary(self, start: float) -> dict[str, Any]:
        count = len(self._requests)
        latencies = sorted((self._done[i] - self._scheduled[i]) * 1000 for i in range(count))
        ok = [i for i in range(count) if self._status[i] == 200]
        last = max((self._done[i] for i in ok), default=start)
        return {
            "rate": self._rate,
            "scheduled": count,
            "ok": len(ok),
            "errors": count - len(ok),
            "unanswered": self._status.count(0),
            "cards": sum(self._cards),
            **{f"p{q}_ms": _quantile(latencies, q / 100) for q in (50, 90, 99)},
            "max_ms": _quantile(latencies, 1.0),
            "achieved_rps": round(len(ok) / (last - start), 1) if last > start else 0.0,
            "client_lag_p99_ms": _quantile(sorted(x * 1000 for x in self._lag), 0.99),
        }


def _quantile(ordered: list[float], q: float) -> float | None:
    """Nearest rank; None where the rank falls on a call that never got an answer."""
    if not ordered:
        return None
    value = ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
    return None if math.isinf(value) else round(value, 2)


# ----------------------------------------------------------------------------- processes


def pin(pid: int, core: int) -> None:
    """Pin every thread of ``pid`` (redis-server starts its background threads early)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), {core})


def cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


def start_service(
    port: int, redis_url: str, keys: DevKeys, workdir: Path, gc_freeze: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    issuer = TrustedIssuer(iss=DEV_ISSUER, jwks_path=keys.jwks_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "REDIS_URL"}
    env |= {
        "CDS_ENVIRONMENT": "production",
        "CDS_PSEUDONYM_KEY": secrets.token_urlsafe(30),  # 40 characters
        "CDS_REDIS_URL": redis_url,
        "CDS_HOST": HOST,
        "CDS_PORT": str(port),
        "CDS_LOG_LEVEL": "WARNING",
        "CDS_JWT__ISSUERS": json.dumps([issuer.model_dump(mode="json")]),
        "CDS_SEPSIS__DEVICE": "cpu",
        "CDS_GC_FREEZE": "true" if gc_freeze else "false",
    }
    log_path = workdir / f"service-gc-freeze-{gc_freeze}.log"
    command = ["taskset", "-c", str(SERVER_CORE), sys.executable, "-m", "cds_service.cli", "serve"]
    with log_path.open("wb") as log:
        # cwd: a scratch folder, so that no developer's .env is read.
        server = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://{HOST}:{port}/readyz").status_code == 200:
                return server, log_path
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the service did not become ready:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.2)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# ----------------------------------------------------------------------------- floor


async def _floor(body: bytes, redis_url: str, calls: int) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    sha = await client.script_load("return ARGV[1]")
    timings = []
    for i in range(calls + 200):  # the first 200 are warm-up
        started = time.perf_counter()
        orjson.loads(body)
        # A hook call that shows a card sends SET NX (replay check), the timeline script and the
        # alert script: the same three commands, pipelined into one trip.
        pipe = client.pipeline(transaction=False)
        pipe.set(f"bench:floor:jti:{i}", b"1", nx=True, ex=60)
        pipe.evalsha(sha, 0, "timeline")
        pipe.evalsha(sha, 0, "alert")
        await pipe.execute()
        timings.append((time.perf_counter() - started) * 1000)
    await client.aclose()
    ordered = sorted(timings[200:])
    return {"calls": calls, "p50_ms": _quantile(ordered, 0.5), "p99_ms": _quantile(ordered, 0.99)}


def run_floor(body: bytes, redis_url: str, calls: int, workdir: Path) -> dict[str, Any]:
    """The floor in its own process on the server's core, while the service is idle."""
    body_path = workdir / "floor-body.json"
    body_path.write_bytes(body)
    command = [
        "taskset", "-c", str(SERVER_CORE), sys.executable, __file__,
        "--floor-worker", str(body_path), "--redis-url", redis_url, "--floor-calls", str(calls),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result | {"body_kib": round(len(body) / 1024, 1)}


# ----------------------------------------------------------------------------- metrics


async def scrape(client: httpx.AsyncClient, port: int) -> dict[tuple[str, str], float]:
    text = (await client.get(f"http://{HOST}:{port}/metrics")).text
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return samples


def server_view(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """What the service's own metrics say about one step."""
    diff = {key: value - before.get(key, 0.0) for key, value in after.items()}

    def by_label(name: str) -> dict[str, int]:
        return {labels: int(v) for (n, labels), v in diff.items() if n == name and v}

    def mean_ms(name: str) -> float | None:
        count = sum(v for (n, _), v in diff.items() if n == f"{name}_count")
        total = sum(v for (n, _), v in diff.items() if n == f"{name}_sum")
        return round(total / count * 1000, 2) if count else None

    gc_pauses: dict[str, dict[str, Any]] = {}
    for generation in ("0", "1", "2"):
        labels = f"generation={generation}"
        count = int(diff.get(("cds_gc_pause_seconds_count", labels), 0))
        buckets = sorted(
            (float(lab.rsplit("le=", 1)[1]), v)
            for (n, lab), v in diff.items()
            if n == "cds_gc_pause_seconds_bucket" and lab.startswith(f"{labels},")
        )
        top = next((le for le, v in buckets if count and v >= count), None)
        gc_pauses[generation] = {
            "pauses": count,
            "total_ms": round(diff.get(("cds_gc_pause_seconds_sum", labels), 0.0) * 1000, 1),
            # the upper bound of the bucket holding the longest pause; "+Inf": over the last one
            "max_bucket_ms": None if top is None else "+Inf" if math.isinf(top) else top * 1000,
        }
    return {
        "calls": int(sum(v for (n, _), v in diff.items() if n == "cds_hook_latency_seconds_count")),
        "hook_mean_ms": mean_ms("cds_hook_latency_seconds"),
        "inference_mean_ms": mean_ms("cds_inference_latency_seconds"),
        "cards": by_label("cds_cards_total"),
        "suppressed": by_label("cds_cards_suppressed_total"),
        "not_shown": by_label("cds_score_not_shown_total"),
        "gc": gc_pauses,
    }


# ----------------------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    # The README's speed probe: this machine's speed drifts between runs.
    probe = min(timeit.repeat("sum(range(10**6))", number=10, repeat=5)) / 10
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "sum_range_1e6_ms": round(probe * 1000, 1),
        # Anything else running shares the two cores: a load well above 0 perturbs every figure.
        "loadavg_at_start": os.getloadavg(),
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def step(
    port: int, pids: dict[str, int], requests: list[bytes], rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    async with httpx.AsyncClient() as control:
        before = await scrape(control, port)
        cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
        # The client's own collector pauses would be counted as service latency.
        gc.collect()
        gc.disable()
        try:
            result = await OpenLoop(port, requests, rate, args.pool).run(args.grace)
        finally:
            gc.enable()
        await asyncio.sleep(args.settle)  # calls cut off at the deadline finish on the server
        cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
        after = await scrape(control, port)
    server = server_view(before, after)
    calls = server.pop("calls") or 1
    # CPU per call on core 0 bounds its throughput: 1 / (service + Redis) calls per second.
    per_call = {f"{name}_cpu_ms_per_call": round(v / calls * 1000, 2) for name, v in cpu.items()}
    return result | per_call | {"server": server}


def _ms(value: float | None) -> str:
    return "unanswered" if value is None else f"{value:.1f} ms"


def report(result: dict[str, Any]) -> str:
    floor = result["floor"]
    machine = result["machine"]
    lines = [
        f"{machine['cpu']}, {machine['nproc']} cores, sum(range(10**6)) "
        f"{machine['sum_range_1e6_ms']} ms, load average at start "
        f"{machine['loadavg_at_start'][0]:.2f}, at end {machine['loadavg_at_end'][0]:.2f}; "
        f"pinning {machine['pinning']}",
        f"Floor (core {SERVER_CORE}, {floor['body_kib']} KiB body): orjson.loads + one pipelined "
        f"Redis trip (3 commands): p50 {_ms(floor['p50_ms'])}, p99 {_ms(floor['p99_ms'])}",
        "",
        "| GC freeze | rate/s | achieved/s | ok | errors (unanswered) | cards | p50 | p90 | p99 "
        "| max | p50 / floor p50 | server mean | ORT mean | CPU/call service + Redis "
        "| client lag p99 |",
        "| --- " * 15 + "|",
    ]
    for s in result["steps"]:
        ratio = f"{s['p50_ms'] / floor['p50_ms']:.1f}x" if s["p50_ms"] else "—"
        server = s["server"]
        lines.append(
            f"| {s['gc_freeze']} | {s['rate']:g} | {s['achieved_rps']:g} | {s['ok']} "
            f"| {s['errors']} ({s['unanswered']}) | {s['cards']} | {_ms(s['p50_ms'])} "
            f"| {_ms(s['p90_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['max_ms'])} | {ratio} "
            f"| {_ms(server['hook_mean_ms'])} | {_ms(server['inference_mean_ms'])} "
            f"| {s['service_cpu_ms_per_call']} + {s['redis_cpu_ms_per_call']} ms "
            f"| {_ms(s['client_lag_p99_ms'])} |"
        )
    lines += ["", "| GC freeze | rate/s | p99 | gen 0 | gen 1 | gen 2 |", "| --- " * 6 + "|"]
    for s in result["steps"]:
        if s["rate"] != result["config"]["gc_rate"]:
            continue
        cells = [
            f"{g['pauses']} pauses, {g['total_ms']} ms in all, longest "
            + ("> 100 ms" if g["max_bucket_ms"] == "+Inf" else f"≤ {g['max_bucket_ms']:g} ms")
            if g["pauses"]
            else "none"
            for g in s["server"]["gc"].values()
        ]
        lines.append(
            f"| {s['gc_freeze']} | {s['rate']:g} | {_ms(s['p99_ms'])} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 200, 300, 400])
    parser.add_argument("--duration", type=float, default=20, help="seconds per rate")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up per service")
    parser.add_argument("--warmup-rate", type=float, default=20)
    parser.add_argument("--gc-rate", type=float, default=300, help="rate repeated, GC not frozen")
    parser.add_argument("--pool", type=int, default=32, help="keep-alive connections")
    parser.add_argument(
        "--grace", type=float, default=3, help="wait for answers after the last send"
    )
    parser.add_argument("--settle", type=float, default=1, help="idle time after each step")
    parser.add_argument("--profiles", type=int, default=40, help="distinct value trajectories")
    parser.add_argument("--floor-calls", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--floor-worker", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.floor_worker:
        body = Path(args.floor_worker).read_bytes()
        print(json.dumps(asyncio.run(_floor(body, args.redis_url, args.floor_calls))))
        return
    warm_up = (args.warmup_rate, args.warmup)
    plans = {
        True: [warm_up, *((rate, args.duration) for rate in args.rates)],
        False: [warm_up, (args.gc_rate, args.duration)],
    }
    total = sum(int(rate * seconds) for plan in plans.values() for rate, seconds in plan)
    result: dict[str, Any] = {"config": vars(args) | {"json": str(args.json)}, "steps": []}
    with (
        tempfile.TemporaryDirectory(prefix="cds-sepsis-load-") as scratch,
        EmbeddedRedis() as redis_server,
    ):
        workdir = Path(scratch)
        keys, _ = ensure_dev_keys(workdir / "keys")
        port = free_port()
        audience = f"http://{HOST}:{port}/cds-services/{SERVICE}"
        requests = Requests(port, mint_tokens(keys, audience, total), args.profiles)
        assert redis_server.pid is not None  # started by the with statement
        pin(redis_server.pid, SERVER_CORE)
        os.sched_setaffinity(0, {CLIENT_CORE})
        result["machine"] = machine()
        for gc_freeze, plan in plans.items():
            server, log = start_service(port, redis_server.url, keys, workdir, gc_freeze)
            try:
                result["machine"]["pinning"] = {
                    "service": cpus_allowed(server.pid),
                    "redis": cpus_allowed(redis_server.pid),
                    "client": cpus_allowed(os.getpid()),
                }
                if gc_freeze:
                    requests.refresh()
                    floor_body = requests.body(999_999)
                    result["floor"] = run_floor(
                        floor_body, redis_server.url, args.floor_calls, workdir
                    )
                for k, (rate, seconds) in enumerate(plan):
                    requests.refresh()
                    batch = requests.take(int(rate * seconds))
                    pids = {"service": server.pid, "redis": redis_server.pid}
                    outcome = asyncio.run(step(port, pids, batch, rate, args))
                    print(f"gc_freeze={gc_freeze} {rate:g}/s: p99 {_ms(outcome['p99_ms'])}")
                    if k:  # the first of each plan is its warm-up
                        result["steps"].append({"gc_freeze": gc_freeze, **outcome})
            finally:
                stop(server)
            result[f"service_log_gc_freeze_{gc_freeze}"] = log.read_text()[-2000:]
        result["redis_used_memory_mib"] = _redis_memory(redis_server.url)
        result["machine"]["loadavg_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(report(result))


def _redis_memory(url: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        return round(int(client.info("memory")["used_memory"]) / 2**20, 1)
    finally:
        client.close()


if __name__ == "__main__":
    main()
