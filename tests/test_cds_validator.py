"""Tests for the CDS Hooks 2.0.1 conformance validator in ``tests/cds_validator.py``.

Two kinds of test:

* file-driven: the known-good and known-bad example documents in ``shared/cds-hooks`` (skipped,
  with a reason, where that folder is absent);
* hand-made: small documents proving that each rule of the checklist can fail (always run).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cds_validator import (
    MAX_SUMMARY_CHARS,
    response_warnings,
    validate_discovery,
    validate_feedback,
    validate_response,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "cds-hooks"
SHARED_MISSING = (
    f"CDS Hooks example files not found at {SHARED} (shared/cds-hooks is not checked out)"
)

JSONObject = dict[str, object]


# --------------------------------------------------------------------------- helpers


def _shared_files(pattern: str) -> list[object]:
    """Names of the shared example files matching ``pattern``, as pytest parameters."""
    if not SHARED.is_dir():
        return [pytest.param("<missing>", marks=pytest.mark.skip(reason=SHARED_MISSING))]
    return [str(path.relative_to(SHARED)) for path in sorted(SHARED.glob(pattern))]


def _load(name: str) -> object:
    if not SHARED.is_dir():
        pytest.skip(SHARED_MISSING)
    with (SHARED / name).open(encoding="utf-8") as handle:
        return json.load(handle)


def _at(findings: list[str], path: str) -> list[str]:
    """The findings whose JSON path is exactly ``path``."""
    return [finding for finding in findings if finding.partition(": ")[0] == path]


def _card(**members: object) -> JSONObject:
    """A minimal conforming card; keyword arguments add or replace members."""
    card: JSONObject = {
        "uuid": "2f0e0c52-3f3a-4f59-9a67-2a8a8d8e4c11",
        "summary": "Sepsis risk is high: consider a lactate and blood cultures",
        "indicator": "warning",
        "source": {"label": "Sepsis early warning"},
    }
    card.update(members)
    return card


def _response(*cards: JSONObject, **members: object) -> JSONObject:
    return {"cards": list(cards), **members}


def _action(**members: object) -> JSONObject:
    action: JSONObject = {
        "type": "create",
        "description": "Order a serum lactate",
        "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"},
    }
    action.update(members)
    return action


def _suggestion(**members: object) -> JSONObject:
    suggestion: JSONObject = {
        "label": "Order lactate",
        "uuid": "7a1d35a4-8c0e-4a5e-9d1b-51f2b3a8c9d0",
        "actions": [_action()],
    }
    suggestion.update(members)
    return suggestion


def _link(**members: object) -> JSONObject:
    link: JSONObject = {
        "label": "Surviving Sepsis Campaign",
        "url": "https://www.sccm.org/survivingsepsiscampaign",
        "type": "absolute",
    }
    link.update(members)
    return link


def _service(**members: object) -> JSONObject:
    service: JSONObject = {
        "hook": "patient-view",
        "id": "sepsis-risk",
        "title": "Sepsis risk",
        "description": "Early warning of sepsis and acute deterioration",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
    }
    service.update(members)
    return service


def _entry(**members: object) -> JSONObject:
    entry: JSONObject = {
        "card": "2f0e0c52-3f3a-4f59-9a67-2a8a8d8e4c11",
        "outcome": "overridden",
        "outcomeTimestamp": "2026-11-23T03:36:26.333Z",
    }
    entry.update(members)
    return entry


# --------------------------------------------------------------------------- known-good files


@pytest.mark.parametrize("name", _shared_files("response-*.json"))
def test_shared_good_response_conforms(name: str) -> None:
    assert validate_response(_load(name)) == []


@pytest.mark.parametrize("name", _shared_files("discovery-*.json"))
def test_shared_good_discovery_conforms(name: str) -> None:
    assert validate_discovery(_load(name)) == []


@pytest.mark.parametrize("name", _shared_files("feedback-*.json"))
def test_shared_good_feedback_conforms(name: str) -> None:
    assert validate_feedback(_load(name)) == []


def test_shared_good_files_are_present() -> None:
    """The globs above must find something, or the file-driven tests prove nothing."""
    if not SHARED.is_dir():
        pytest.skip(SHARED_MISSING)
    for pattern in ("response-*.json", "discovery-*.json", "feedback-*.json"):
        assert list(SHARED.glob(pattern)), pattern


def test_shared_card_without_uuid_is_warned() -> None:
    doc = _load("response-cards-links-smart-appcontext-overridereasons.json")
    warnings = response_warnings(doc)
    assert _at(warnings, "cards[1].uuid"), warnings
    assert not _at(warnings, "cards[0].uuid"), warnings


def test_shared_fragments_conform_inside_a_response() -> None:
    source = _load("fragment-card-source-topic.json")
    reasons = _load("fragment-overridereasons.json")
    actions = _load("fragment-actions-create-update-delete.json")
    assert isinstance(source, dict)
    assert isinstance(reasons, dict)
    card = _card(
        **source,
        **reasons,
        selectionBehavior="any",
        suggestions=[_suggestion(actions=actions)],
    )
    assert validate_response(_response(card)) == []
    assert response_warnings(_response(card)) == []


def test_shared_prefetch_fragment_conforms_inside_a_discovery() -> None:
    fragment = _load("fragment-prefetch-templates.json")
    assert isinstance(fragment, dict)
    assert validate_discovery({"services": [_service(prefetch=fragment["prefetch"])]}) == []


# --------------------------------------------------------------------------- known-bad files

# Each nonconforming response: (findings that must be problems, findings that must be warnings).
# A finding is (JSON path, words the message must contain).
Finding = tuple[str, tuple[str, ...]]
NONCONFORMING_RESPONSES: dict[str, tuple[list[Finding], list[Finding]]] = {
    "response-autolaunchable-missing-indicator.json": (
        [("cards[0].indicator", ("required",))],
        [],
    ),
    "response-systemactions-missing-description-spec.json": (
        [("systemActions[0].description", ("required",))],
        [],
    ),
    "response-systemactions-missing-description-docs.json": (
        [("systemActions[0].description", ("required",))],
        [],
    ),
    "response-bare-card-missing-source-docs.json": (
        [("cards", ("required", "bare card")), ("source", ("required",))],
        [],
    ),
    "response-suggestions-missing-selectionbehavior-sandbox-cds-services.json": (
        [("cards[0].selectionBehavior", ("required",))],
        [],
    ),
    # Legal JSON, but a 2.0 client ignores actions hidden in an extension: a warning, plus a
    # warning that the hidden action would also lack its REQUIRED description.
    "response-systemactions-in-extension-sandbox-cds-services.json": (
        [],
        [
            ("extension.systemActions", ("ignored", "top-level")),
            ("extension.systemActions[0].description", ("required",)),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(NONCONFORMING_RESPONSES))
def test_shared_nonconforming_response_is_flagged(name: str) -> None:
    doc = _load(f"nonconforming/{name}")
    problems = validate_response(doc)
    warnings = response_warnings(doc)
    assert problems or warnings, "a known-bad document must be flagged"
    expected_problems, expected_warnings = NONCONFORMING_RESPONSES[name]
    for found, expected in ((problems, expected_problems), (warnings, expected_warnings)):
        for path, words in expected:
            matching = [f for f in _at(found, path) if all(w in f for w in words)]
            assert matching, f"expected {path} mentioning {words}; got {found}"
    assert all(": " in finding for finding in problems + warnings)


def test_shared_nonconforming_responses_all_have_expectations() -> None:
    if not SHARED.is_dir():
        pytest.skip(SHARED_MISSING)
    on_disk = {path.name for path in (SHARED / "nonconforming").glob("response-*.json")}
    assert on_disk == set(NONCONFORMING_RESPONSES)


def test_bare_card_is_rejected_for_both_reasons() -> None:
    doc = _load("nonconforming/response-bare-card-missing-source-docs.json")
    problems = validate_response(doc)
    assert _at(problems, "cards")
    assert _at(problems, "source") == ["source: required"]


# --------------------------------------------------------------------------- response: top level


def test_minimal_card_conforms_without_warnings() -> None:
    assert validate_response(_response(_card())) == []
    assert response_warnings(_response(_card())) == []


def test_empty_cards_is_the_one_allowed_empty_value() -> None:
    assert validate_response({"cards": []}) == []


@pytest.mark.parametrize("doc", [None, [], "cards", 3, [_card()]])
def test_response_must_be_an_object(doc: object) -> None:
    problems = validate_response(doc)
    assert len(problems) == 1
    assert problems[0].startswith("$: must be")


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ({}, "cards", "required"),
        ({"cards": None}, "cards", "null"),
        ({"cards": {}}, "cards", "{}"),
        ({"cards": "none"}, "cards", "array"),
        ({"cards": [], "systemActions": []}, "systemActions", "omitted"),
        ({"cards": [], "systemActions": None}, "systemActions", "omitted"),
        ({"cards": [], "systemActions": _action()}, "systemActions", "array"),
        ({"cards": [], "extension": {}}, "extension", "omitted"),
        ({"cards": [], "extension": "org.example"}, "extension", "object"),
        ({"cards": [], "extension": ["org.example"]}, "extension", "object"),
        ({"cards": [None]}, "cards[0]", "object"),
        ({"cards": ["card"]}, "cards[0]", "object"),
    ],
)
def test_response_top_level_rules(doc: JSONObject, path: str, words: str) -> None:
    problems = validate_response(doc)
    assert [p for p in _at(problems, path) if words in p], problems


def test_system_actions_are_validated_as_actions() -> None:
    assert validate_response(_response(systemActions=[_action()])) == []
    problems = validate_response(_response(systemActions=[_action(type="patch")]))
    assert _at(problems, "systemActions[0].type"), problems


def test_unknown_top_level_member_is_a_warning() -> None:
    doc = _response(_card(), systemAction=[_action()])
    assert validate_response(doc) == []
    assert _at(response_warnings(doc), "systemAction")


def test_extension_system_actions_are_warned() -> None:
    hidden = {"type": "update", "resource": {"resourceType": "ServiceRequest", "id": "x"}}
    doc = _response(extension={"systemActions": [hidden]})
    assert validate_response(doc) == []
    warnings = response_warnings(doc)
    assert _at(warnings, "extension.systemActions")
    assert _at(warnings, "extension.systemActions[0].description") == [
        "extension.systemActions[0].description: required"
    ]


def test_extension_keys_should_be_reverse_domain() -> None:
    good = _response(_card(extension={"org.example.sepsis.score": 0.83}))
    assert validate_response(good) == []
    assert response_warnings(good) == []
    bad = _response(_card(extension={"score": 0.83}))
    assert validate_response(bad) == []
    assert _at(response_warnings(bad), "cards[0].extension.score")


# --------------------------------------------------------------------------- response: cards


def test_summary_of_139_characters_is_accepted() -> None:
    summary = "S" * MAX_SUMMARY_CHARS
    assert len(summary) == 139
    assert validate_response(_response(_card(summary=summary))) == []


def test_summary_of_140_characters_is_rejected() -> None:
    problems = validate_response(_response(_card(summary="S" * 140)))
    assert _at(problems, "cards[0].summary") == [
        "cards[0].summary: must be fewer than 140 characters, has 140"
    ]


def test_summary_length_counts_characters_not_bytes() -> None:
    assert validate_response(_response(_card(summary="é" * 139))) == []


@pytest.mark.parametrize("member", ["summary", "indicator", "source"])
def test_required_card_member_missing(member: str) -> None:
    card = _card()
    del card[member]
    assert f"cards[0].{member}: required" in validate_response(_response(card))


@pytest.mark.parametrize(
    ("member", "value", "words"),
    [
        ("summary", 42, "string"),
        ("summary", "   ", "blank"),
        ("summary", "", "required"),
        ("indicator", "high", "info | warning | critical"),
        ("indicator", "INFO", "info | warning | critical"),
        ("indicator", None, "required"),
        ("source", "Sepsis CDS", "object"),
        ("source", {}, "required"),
        ("detail", 3, "string"),
        ("detail", "", "omitted"),
        ("detail", None, "omitted"),
        ("uuid", 12345, "string"),
        ("uuid", "", "omitted"),
        ("links", [], "omitted"),
        ("links", {"label": "x"}, "array"),
        ("suggestions", [], "omitted"),
        ("suggestions", None, "omitted"),
        ("overrideReasons", [], "omitted"),
        ("selectionBehavior", "all", "at-most-one | any"),
        ("extension", {}, "omitted"),
        ("extension", "org.example", "object"),
    ],
)
def test_card_member_rules(member: str, value: object, words: str) -> None:
    problems = validate_response(_response(_card(**{member: value})))
    assert [p for p in _at(problems, f"cards[0].{member}") if words in p], problems


@pytest.mark.parametrize("indicator", ["info", "warning", "critical"])
def test_every_indicator_is_accepted(indicator: str) -> None:
    assert validate_response(_response(_card(indicator=indicator))) == []


def test_card_without_uuid_is_a_warning_only() -> None:
    card = _card()
    del card["uuid"]
    assert validate_response(_response(card)) == []
    assert _at(response_warnings(_response(card)), "cards[0].uuid")


def test_card_uuid_that_is_not_a_uuid_is_a_warning() -> None:
    doc = _response(_card(uuid="card-1"))
    assert validate_response(doc) == []
    assert _at(response_warnings(doc), "cards[0].uuid")


def test_duplicate_card_uuids_are_rejected() -> None:
    problems = validate_response(_response(_card(), _card()))
    assert _at(problems, "cards[1].uuid"), problems


@pytest.mark.parametrize(
    ("source", "path", "words"),
    [
        ({"url": "https://example.org"}, "cards[0].source.label", "required"),
        ({"label": ""}, "cards[0].source.label", "required"),
        ({"label": 7}, "cards[0].source.label", "string"),
        ({"label": "x", "url": "/about"}, "cards[0].source.url", "absolute"),
        ({"label": "x", "icon": "icon.png"}, "cards[0].source.icon", "absolute"),
        ({"label": "x", "topic": "sepsis"}, "cards[0].source.topic", "Coding"),
        ({"label": "x", "topic": {"code": "sepsis"}}, "cards[0].source.topic.system", "required"),
        ({"label": "x", "topic": {"system": "urn:x"}}, "cards[0].source.topic.code", "required"),
        ({"label": "x", "topic": {}}, "cards[0].source.topic", "omitted"),
        ({"label": "x", "url": None}, "cards[0].source.url", "omitted"),
    ],
)
def test_source_rules(source: JSONObject, path: str, words: str) -> None:
    problems = validate_response(_response(_card(source=source)))
    assert [p for p in _at(problems, path) if words in p], problems


def test_source_topic_display_is_optional() -> None:
    source = {
        "label": "Sepsis early warning",
        "url": "https://example.org/sepsis",
        "icon": "https://example.org/sepsis/100.png",
        "topic": {"system": "http://example.org/topics", "code": "sepsis"},
    }
    assert validate_response(_response(_card(source=source))) == []


# --------------------------------------------------------------------------- suggestions, actions


def test_suggestions_need_selection_behavior() -> None:
    problems = validate_response(_response(_card(suggestions=[_suggestion()])))
    assert _at(problems, "cards[0].selectionBehavior"), problems


@pytest.mark.parametrize("behavior", ["at-most-one", "any"])
def test_suggestions_with_selection_behavior_conform(behavior: str) -> None:
    card = _card(suggestions=[_suggestion()], selectionBehavior=behavior)
    assert validate_response(_response(card)) == []
    assert response_warnings(_response(card)) == []


@pytest.mark.parametrize(
    ("suggestion", "path", "words"),
    [
        ({"uuid": "7a1d35a4-8c0e-4a5e-9d1b-51f2b3a8c9d0"}, "label", "required"),
        ({"label": ""}, "label", "required"),
        ({"label": ["Order"]}, "label", "string"),
        ({"label": "x", "isRecommended": "yes"}, "isRecommended", "boolean"),
        ({"label": "x", "actions": []}, "actions", "omitted"),
        ({"label": "x", "actions": _action()}, "actions", "array"),
        ({"label": "x", "uuid": None}, "uuid", "omitted"),
    ],
)
def test_suggestion_rules(suggestion: JSONObject, path: str, words: str) -> None:
    card = _card(suggestions=[suggestion], selectionBehavior="any")
    problems = validate_response(_response(card))
    assert [p for p in _at(problems, f"cards[0].suggestions[0].{path}") if words in p], problems


def test_suggestion_without_uuid_is_a_warning_only() -> None:
    suggestion = _suggestion()
    del suggestion["uuid"]
    doc = _response(_card(suggestions=[suggestion], selectionBehavior="at-most-one"))
    assert validate_response(doc) == []
    assert _at(response_warnings(doc), "cards[0].suggestions[0].uuid")


def test_duplicate_suggestion_uuids_are_rejected() -> None:
    card = _card(suggestions=[_suggestion(), _suggestion(label="Again")], selectionBehavior="any")
    assert _at(validate_response(_response(card)), "cards[0].suggestions[1].uuid")


def test_several_recommended_suggestions_with_at_most_one_is_a_warning() -> None:
    second = _suggestion(uuid="0b7a3f0e-7a55-4a35-8a3e-7a5fd0c3a111", isRecommended=True)
    card = _card(
        suggestions=[_suggestion(isRecommended=True), second], selectionBehavior="at-most-one"
    )
    assert validate_response(_response(card)) == []
    assert _at(response_warnings(_response(card)), "cards[0].suggestions")
    card["selectionBehavior"] = "any"
    assert response_warnings(_response(card)) == []


def _action_problems(action: JSONObject) -> list[str]:
    card = _card(suggestions=[_suggestion(actions=[action])], selectionBehavior="any")
    return validate_response(_response(card))


ACTION = "cards[0].suggestions[0].actions[0]"


@pytest.mark.parametrize(
    "action",
    [
        _action(),
        _action(type="update", resource={"resourceType": "ServiceRequest", "id": "sr-1"}),
        {"type": "delete", "description": "Remove the order", "resourceId": "ServiceRequest/sr-1"},
        {"type": "delete", "description": "Remove", "resourceId": "ServiceRequest/sr-1/_history/2"},
    ],
)
def test_conforming_actions(action: JSONObject) -> None:
    assert _action_problems(action) == []


@pytest.mark.parametrize(
    ("action", "path", "words"),
    [
        (_action(type="patch"), "type", "create | update | delete"),
        ({"description": "x", "resource": {"resourceType": "Task"}}, "type", "required"),
        ({"type": "create", "resource": {"resourceType": "Task"}}, "description", "required"),
        (_action(description=""), "description", "required"),
        (_action(description=None), "description", "required"),
        ({"type": "create", "description": "x"}, "resource", "required"),
        ({"type": "update", "description": "x"}, "resource", "required"),
        (_action(resource={"status": "draft"}), "resource.resourceType", "required"),
        (_action(resource={"resourceType": "task"}), "resource.resourceType", "resource type"),
        (_action(resource={"resourceType": 3}), "resource.resourceType", "resource type"),
        (_action(resource="ServiceRequest/sr-1"), "resource", "FHIR resource"),
        (_action(resource={}), "resource", "omitted"),
        ({"type": "delete", "description": "x"}, "resourceId", "required"),
        ({"type": "delete", "description": "x", "resourceId": "sr-1"}, "resourceId", "relative"),
        (
            {"type": "delete", "description": "x", "resourceId": "https://f.example/Task/1"},
            "resourceId",
            "relative",
        ),
        ({"type": "delete", "description": "x", "resourceId": 12}, "resourceId", "string"),
        ({"type": "delete", "description": "x", "resource": 12}, "resource", "string id"),
    ],
)
def test_action_rules(action: JSONObject, path: str, words: str) -> None:
    problems = _action_problems(action)
    assert [p for p in _at(problems, f"{ACTION}.{path}") if words in p], problems


def test_delete_with_deprecated_resource_is_a_warning_only() -> None:
    action = {"type": "delete", "description": "Remove the order", "resource": "sr-1"}
    card = _card(suggestions=[_suggestion(actions=[action])], selectionBehavior="any")
    assert validate_response(_response(card)) == []
    assert _at(response_warnings(_response(card)), f"{ACTION}.resource")


def test_fhir_resource_content_is_not_checked_as_cds_hooks_data() -> None:
    resource = {"resourceType": "ServiceRequest", "id": "sr-1", "...": "<snipped for brevity>"}
    assert _action_problems(_action(resource=resource)) == []


# --------------------------------------------------------------------------- overrideReasons


def test_override_reasons_with_display_conform() -> None:
    reasons = [{"code": "not-now", "system": "http://example.org/or", "display": "Not now"}]
    assert validate_response(_response(_card(overrideReasons=reasons))) == []


def test_override_reason_without_display_is_rejected_in_a_response() -> None:
    reasons = [{"code": "not-now", "system": "http://example.org/or"}]
    problems = validate_response(_response(_card(overrideReasons=reasons)))
    assert _at(problems, "cards[0].overrideReasons[0].display"), problems


@pytest.mark.parametrize(
    ("reason", "path", "words"),
    [
        ({"system": "http://example.org/or", "display": "Not now"}, "code", "required"),
        ({"code": "not-now", "display": "Not now"}, "system", "required"),
        ({"code": "x", "system": "http://example.org/or", "display": ""}, "display", "required"),
        ({"code": 1, "system": "http://example.org/or", "display": "One"}, "code", "string"),
    ],
)
def test_override_reason_coding_rules(reason: JSONObject, path: str, words: str) -> None:
    problems = validate_response(_response(_card(overrideReasons=[reason])))
    found = _at(problems, f"cards[0].overrideReasons[0].{path}")
    assert [p for p in found if words in p], problems


def test_override_reasons_must_be_codings() -> None:
    problems = validate_response(_response(_card(overrideReasons=["Not now"])))
    assert _at(problems, "cards[0].overrideReasons[0]"), problems


# --------------------------------------------------------------------------- links


def test_empty_links_are_rejected() -> None:
    problems = validate_response(_response(_card(links=[])))
    assert _at(problems, "cards[0].links") == [
        "cards[0].links: must be omitted rather than sent as []"
    ]


def test_app_context_on_a_smart_link_conforms() -> None:
    link = _link(type="smart", url="https://app.example.org/launch", appContext='{"x":1}')
    assert validate_response(_response(_card(links=[link]))) == []


def test_app_context_on_an_absolute_link_is_rejected() -> None:
    problems = validate_response(_response(_card(links=[_link(appContext='{"x":1}')])))
    assert [p for p in _at(problems, "cards[0].links[0].appContext") if "smart" in p], problems


@pytest.mark.parametrize("value", [True, False])
def test_autolaunchable_boolean_conforms(value: bool) -> None:
    assert validate_response(_response(_card(links=[_link(autolaunchable=value)]))) == []


@pytest.mark.parametrize(
    ("link", "path", "words"),
    [
        (_link(autolaunchable="true"), "autolaunchable", "boolean"),
        (_link(autolaunchable=None), "autolaunchable", "omitted"),
        (_link(type="relative"), "type", "absolute | smart"),
        (_link(url="guidelines/sepsis.html"), "url", "absolute"),
        (_link(url="javascript:alert(1)"), "url", "absolute"),
        (_link(label=None), "label", "required"),
        (_link(type="smart", appContext=""), "appContext", "omitted"),
        (_link(type="smart", appContext={"x": 1}), "appContext", "string"),
        ({"url": "https://example.org", "type": "absolute"}, "label", "required"),
        ({"label": "x", "type": "absolute"}, "url", "required"),
        ({"label": "x", "url": "https://example.org"}, "type", "required"),
    ],
)
def test_link_rules(link: JSONObject, path: str, words: str) -> None:
    problems = validate_response(_response(_card(links=[link])))
    assert [p for p in _at(problems, f"cards[0].links[0].{path}") if words in p], problems


def test_links_must_be_objects() -> None:
    problems = validate_response(_response(_card(links=["https://example.org"])))
    assert _at(problems, "cards[0].links[0]"), problems


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "doc",
    [
        {"cards": [{"source": "x", "links": [1], "suggestions": [1], "overrideReasons": ["x"]}]},
        {"cards": [_card(suggestions=[{"actions": [None, 1, {"type": 3}]}])]},
        {"cards": [], "systemActions": [None, "x", {}, {"type": "delete", "resource": {}}]},
        {"cards": [], "extension": {"systemActions": "x"}},
        {"cards": [], "extension": {"systemActions": [None]}},
        {"summary": 3},
    ],
)
def test_malformed_responses_are_reported_not_raised(doc: object) -> None:
    before = copy.deepcopy(doc)
    findings = validate_response(doc) + response_warnings(doc)
    assert findings
    assert all(isinstance(f, str) and ": " in f for f in findings)
    assert doc == before, "the validator must not modify its input"


@pytest.mark.parametrize("validator", [validate_discovery, validate_feedback])
@pytest.mark.parametrize("doc", [None, [], "x", 1.5, True])
def test_other_validators_need_an_object(
    validator: Callable[[object], list[str]], doc: object
) -> None:
    problems = validator(doc)
    assert isinstance(problems, list)
    assert len(problems) == 1
    assert problems[0].startswith("$: must be")


# --------------------------------------------------------------------------- discovery


def test_minimal_discovery_conforms() -> None:
    assert validate_discovery({"services": [_service()]}) == []


def test_discovery_without_services_offered_is_an_empty_list() -> None:
    assert validate_discovery({"services": []}) == []


def test_same_id_for_several_hooks_conforms() -> None:
    services = [_service(), _service(hook="encounter-start")]
    assert validate_discovery({"services": services}) == []


def test_duplicate_hook_and_id_is_rejected() -> None:
    problems = validate_discovery({"services": [_service(), _service()]})
    assert _at(problems, "services[1]"), problems


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ({}, "services", "required"),
        ({"services": None}, "services", "null"),
        ({"services": {}}, "services", "{}"),
        ({"services": _service()}, "services", "array"),
        ({"services": ["sepsis-risk"]}, "services[0]", "object"),
    ],
)
def test_discovery_top_level_rules(doc: JSONObject, path: str, words: str) -> None:
    problems = validate_discovery(doc)
    assert [p for p in _at(problems, path) if words in p], problems


@pytest.mark.parametrize("member", ["hook", "id", "description"])
def test_required_service_member_missing(member: str) -> None:
    service = _service()
    del service[member]
    assert f"services[0].{member}: required" in validate_discovery({"services": [service]})


@pytest.mark.parametrize(
    ("member", "value", "words"),
    [
        ("hook", 1, "string"),
        ("id", "", "required"),
        ("description", None, "required"),
        ("description", ["x"], "string"),
        ("title", "", "omitted"),
        ("title", 5, "string"),
        ("usageRequirements", "", "omitted"),
        ("usageRequirements", {"text": "x"}, "string"),
        ("prefetch", {}, "omitted"),
        ("prefetch", None, "omitted"),
        ("prefetch", ["Patient/{{context.patientId}}"], "object"),
        ("prefetch", "Patient/{{context.patientId}}", "object"),
        ("extension", "x", "object"),
    ],
)
def test_service_member_rules(member: str, value: object, words: str) -> None:
    problems = validate_discovery({"services": [_service(**{member: value})]})
    assert [p for p in _at(problems, f"services[0].{member}") if words in p], problems


@pytest.mark.parametrize(
    ("prefetch", "path", "words"),
    [
        ({"patient": 3}, "patient", "string"),
        ({"patient": ""}, "patient", "omitted"),
        ({"patient": None}, "patient", "omitted"),
        ({"patient": {"read": "Patient/1"}}, "patient", "string"),
    ],
)
def test_prefetch_values_are_template_strings(prefetch: JSONObject, path: str, words: str) -> None:
    problems = validate_discovery({"services": [_service(prefetch=prefetch)]})
    found = _at(problems, f"services[0].prefetch.{path}")
    assert [p for p in found if words in p], problems


@pytest.mark.parametrize(
    "template",
    [
        "Patient/{{context.patientId}}",
        "Encounter/{{context.encounterId}}",
        "Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date&_count=50",
        "Practitioner/{{userPractitionerId}}",
        "PractitionerRole?_id={{userPractitionerRoleId}}",
        "Patient/{{userPatientId}}",
        "RelatedPerson/{{userRelatedPersonId}}",
        "{{context.userId}}",
        "Condition?clinical-status=active",
    ],
)
def test_valid_prefetch_tokens(template: str) -> None:
    assert validate_discovery({"services": [_service(prefetch={"data": template})]}) == []


@pytest.mark.parametrize(
    "template",
    [
        "Medication/{{context.medication.id}}",
        "Patient/{{patientId}}",
        "Patient/{{context.}}",
        "Patient/{{context}}",
        "Patient/{{ context.patientId }}",
        "Patient/{{context.patientId}",
        "Patient/{context.patientId}}",
        "Practitioner/{{userId}}",
        "Observation?patient={{context.patientId}}&performer={{user.id}}",
        "Patient/{{Context.patientId}}",
        "Patient?_id={{context.draftOrders}}",
    ],
)
def test_invalid_prefetch_tokens(template: str) -> None:
    problems = validate_discovery({"services": [_service(prefetch={"data": template})]})
    assert _at(problems, "services[0].prefetch.data"), problems


def test_context_tokens_of_unknown_hooks_are_only_shape_checked() -> None:
    service = _service(hook="org.example.sepsis-review", prefetch={"d": "X?a={{context.wardId}}"})
    assert validate_discovery({"services": [service]}) == []


def test_context_token_must_be_a_prefetch_token_of_a_library_hook() -> None:
    service = _service(hook="order-select", prefetch={"d": "X?a={{context.selections}}"})
    problems = validate_discovery({"services": [service]})
    assert [p for p in _at(problems, "services[0].prefetch.d") if "order-select" in p], problems


# --------------------------------------------------------------------------- feedback


def test_minimal_feedback_conforms() -> None:
    assert validate_feedback({"feedback": [_entry()]}) == []


def test_accepted_without_accepted_suggestions_is_rejected() -> None:
    problems = validate_feedback({"feedback": [_entry(outcome="accepted")]})
    assert _at(problems, "feedback[0].acceptedSuggestions") == [
        "feedback[0].acceptedSuggestions: required when outcome is accepted"
    ]


def test_accepted_with_accepted_suggestions_conforms() -> None:
    entry = _entry(outcome="accepted", acceptedSuggestions=[{"id": "7a1d35a4"}])
    assert validate_feedback({"feedback": [entry]}) == []


@pytest.mark.parametrize(
    "reason",
    [
        {"reason": {"code": "not-now", "system": "http://example.org/or"}},
        {"reason": {"code": "not-now", "system": "http://example.org/or", "display": "Not now"}},
        {"userComment": "Already treated"},
        {"reason": {"code": "x", "system": "http://example.org/or"}, "userComment": "Later"},
    ],
)
def test_override_reason_forms_that_conform(reason: JSONObject) -> None:
    assert validate_feedback({"feedback": [_entry(overrideReason=reason)]}) == []


@pytest.mark.parametrize(
    "timestamp",
    [
        "2021-12-11T10:05:31Z",
        "2026-11-23T03:36:12.471Z",
        "2021-12-11T10:05:31+00:00",
        "2021-12-11T11:05:31+01:00",
        "2016-12-31T23:59:60Z",
        "2021-12-11t10:05:31z",
    ],
)
def test_rfc3339_timestamps_conform(timestamp: str) -> None:
    assert validate_feedback({"feedback": [_entry(outcomeTimestamp=timestamp)]}) == []


@pytest.mark.parametrize(
    "timestamp",
    [
        "2021-12-11T10:05:31",
        "2021-12-11 10:05:31Z",
        "2021-12-11",
        "2021-02-30T10:05:31Z",
        "2021-12-11T25:05:31Z",
        "2021-12-11T10:05:31+0100",
        "2021-12-11T10:05:31+24:00",
        "1639217131",
        "yesterday",
    ],
)
def test_bad_timestamps_are_rejected(timestamp: str) -> None:
    problems = validate_feedback({"feedback": [_entry(outcomeTimestamp=timestamp)]})
    assert _at(problems, "feedback[0].outcomeTimestamp"), problems


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ({}, "feedback", "required"),
        ({"feedback": []}, "feedback", "[]"),
        ({"feedback": None}, "feedback", "null"),
        ({"feedback": _entry()}, "feedback", "array"),
        ({"feedback": ["x"]}, "feedback[0]", "object"),
    ],
)
def test_feedback_top_level_rules(doc: JSONObject, path: str, words: str) -> None:
    problems = validate_feedback(doc)
    assert [p for p in _at(problems, path) if words in p], problems


@pytest.mark.parametrize("member", ["card", "outcome", "outcomeTimestamp"])
def test_required_feedback_member_missing(member: str) -> None:
    entry = _entry()
    del entry[member]
    assert f"feedback[0].{member}: required" in validate_feedback({"feedback": [entry]})


@pytest.mark.parametrize(
    ("members", "path", "words"),
    [
        ({"card": 42}, "card", "string"),
        ({"card": ""}, "card", "required"),
        ({"outcome": "ignored"}, "outcome", "accepted | overridden"),
        ({"outcomeTimestamp": 1639217131}, "outcomeTimestamp", "string"),
        ({"outcome": "accepted", "acceptedSuggestions": []}, "acceptedSuggestions", "[]"),
        ({"outcome": "accepted", "acceptedSuggestions": "s1"}, "acceptedSuggestions", "array"),
        ({"outcome": "accepted", "acceptedSuggestions": ["s1"]}, "acceptedSuggestions[0]", "obj"),
        ({"outcome": "accepted", "acceptedSuggestions": [{}]}, "acceptedSuggestions[0].id", "req"),
        (
            {"outcome": "accepted", "acceptedSuggestions": [{"uuid": "s1"}]},
            "acceptedSuggestions[0].id",
            "required",
        ),
        (
            {"outcome": "accepted", "acceptedSuggestions": [{"id": 1}]},
            "acceptedSuggestions[0].id",
            "string",
        ),
        (
            {"outcome": "overridden", "acceptedSuggestions": [{"id": "s1"}]},
            "acceptedSuggestions",
            "only allowed",
        ),
        (
            {
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "s1"}],
                "overrideReason": {"userComment": "x"},
            },
            "overrideReason",
            "only allowed",
        ),
        ({"overrideReason": {}}, "overrideReason", "omitted"),
        ({"overrideReason": "not now"}, "overrideReason", "object"),
        ({"overrideReason": {"userComment": ""}}, "overrideReason.userComment", "omitted"),
        ({"overrideReason": {"userComment": 5}}, "overrideReason.userComment", "string"),
        ({"overrideReason": {"reason": "not-now"}}, "overrideReason.reason", "Coding"),
        (
            {"overrideReason": {"reason": {"code": "not-now"}}},
            "overrideReason.reason.system",
            "required",
        ),
        (
            {"overrideReason": {"reason": {"system": "http://example.org/or"}}},
            "overrideReason.reason.code",
            "required",
        ),
        ({"overrideReason": {"other": "x"}}, "overrideReason", "reason"),
    ],
)
def test_feedback_entry_rules(members: JSONObject, path: str, words: str) -> None:
    problems = validate_feedback({"feedback": [_entry(**members)]})
    assert [p for p in _at(problems, f"feedback[0].{path}") if words in p], problems
