"""Feedback (CDS Hooks 2.0.1 §Feedback): validated, stored once in the real Redis, counted."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
import redis

from cds_service.store.feedback import STREAM

from cds_validator import validate_feedback
from support import CDS_EXAMPLES, SHARED_MISSING, Caller, EhrKey, LiveApi, load_example

pytestmark = pytest.mark.integration

FEEDBACK = "/cds-services/sepsis-patient-view/feedback"


def _examples() -> list[str]:
    if not CDS_EXAMPLES.is_dir():
        return []
    return sorted(p.name for p in CDS_EXAMPLES.glob("feedback-*.json"))


def _stream(redis_client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in redis_client.xrange(STREAM)
    ]


@pytest.fixture(autouse=True)
def _clean(redis_client: redis.Redis) -> None:
    redis_client.delete(STREAM, *redis_client.keys("cds:feedback:seen:*"))


@pytest.mark.skipif(not CDS_EXAMPLES.is_dir(), reason=SHARED_MISSING)
@pytest.mark.parametrize("name", _examples())
def test_shared_feedback_is_stored_once(
    name: str, caller: Caller, redis_client: redis.Redis
) -> None:
    document = load_example(name)
    assert validate_feedback(document) == []
    response = caller.post(FEEDBACK, document)
    assert response.status_code == 200, response.text
    entries = len(document["feedback"])
    assert response.json() == {"received": entries, "stored": entries}
    stored = _stream(redis_client)
    assert [s["card"] for s in stored] == [e["card"] for e in document["feedback"]]
    assert [s["outcome"] for s in stored] == [e["outcome"] for e in document["feedback"]]
    for entry, record in zip(document["feedback"], stored, strict=True):
        accepted = ",".join(s["id"] for s in entry.get("acceptedSuggestions", []))
        assert record["accepted"] == accepted
        assert record["service"] == "sepsis-patient-view"
        reason = entry.get("overrideReason", {}).get("reason")
        assert record["reason_code"] == (reason["code"] if reason else "")
    # The spec lets clients repeat feedback; the repeat is accepted and not stored again.
    again = caller.post(FEEDBACK, document)
    assert again.json() == {"received": entries, "stored": 0}
    assert len(_stream(redis_client)) == entries


def test_free_text_and_caller_identity_are_not_stored_in_clear(
    caller: Caller, es_key: EhrKey, redis_client: redis.Redis
) -> None:
    comment = "Patient Jane Doe refused cultures"
    body = {
        "feedback": [
            {
                "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                "outcome": "overridden",
                "overrideReason": {"userComment": comment},
                "outcomeTimestamp": "2026-11-30T10:00:00Z",
            }
        ]
    }
    assert caller.post(FEEDBACK, body).status_code == 200
    dump = b"".join(value for _, fields in redis_client.xrange(STREAM) for value in fields.values())
    assert b"Jane" not in dump
    assert es_key.iss.encode() not in dump
    (record,) = _stream(redis_client)
    assert record["comment_chars"] == str(len(comment))
    assert len(record["client"]) == 32


def _valid() -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
                "outcomeTimestamp": "2026-11-30T10:00:00Z",
            }
        ]
    }


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda e: e.pop("acceptedSuggestions"), "feedback[0]"),
        (lambda e: e.pop("card"), "feedback[0].card"),
        (lambda e: e.update(outcome="ignored"), "feedback[0].outcome"),
        (lambda e: e.update(outcomeTimestamp="2026-11-30T10:00:00"), "feedback[0].outcomeTimestamp"),
        (lambda e: e.update(outcomeTimestamp="yesterday"), "feedback[0].outcomeTimestamp"),
        (lambda e: e.update(overrideReason={"reason": {"code": "x"}}), "feedback[0].overrideReason.reason.system"),
    ],
)  # fmt: skip
def test_invalid_feedback_is_400_and_nothing_is_stored(
    caller: Caller, redis_client: redis.Redis, change: Any, named: str
) -> None:
    body = copy.deepcopy(_valid())
    change(body["feedback"][0])
    response = caller.post(FEEDBACK, body)
    assert response.status_code == 400, response.text
    expressions = [e for i in response.json()["issue"] for e in i.get("expression", [])]
    assert named in expressions
    assert _stream(redis_client) == []


def test_empty_feedback_list_is_400(caller: Caller) -> None:
    assert caller.post(FEEDBACK, {"feedback": []}).status_code == 400


def test_feedback_needs_a_jwt_for_the_feedback_url(
    api: LiveApi, es_key: EhrKey, http: httpx.Client
) -> None:
    url = f"{api.url}{FEEDBACK}"
    hook_url = f"{api.url}/cds-services/sepsis-patient-view"
    assert http.post(url, json=_valid()).status_code == 401
    wrong = {"Authorization": f"Bearer {es_key.token(hook_url)}"}
    assert http.post(url, json=_valid(), headers=wrong).status_code == 401


def test_feedback_for_unknown_service_is_404(caller: Caller) -> None:
    assert caller.post("/cds-services/nope/feedback", _valid()).status_code == 404


def test_feedback_is_counted(caller: Caller, api: LiveApi, http: httpx.Client) -> None:
    caller.post(FEEDBACK, _valid())
    metrics = http.get(f"{api.url}/metrics").text
    line = (
        'cds_feedback_entries_total{outcome="accepted",service="sepsis-patient-view",stored="true"}'
    )
    assert line in metrics
