"""CDS Hooks 2.0.1 conformance checks for the JSON bodies a CDS service sends and receives.

Written from the conformance checklist in ``shared/cds-hooks/README.md`` (CDS Hooks 2.0.1, STU2,
with the CDS Hooks Library 1.0.1 hook definitions). Standard library only.

Public API, each taking an already-parsed JSON document (any Python object):

* :func:`validate_response`: problems in a CDS service response (``{"cards": [...]}``).
* :func:`response_warnings`: non-fatal findings in the same kind of document.
* :func:`validate_discovery`: problems in a discovery document (``{"services": [...]}``).
* :func:`validate_feedback`: problems in a feedback body (``{"feedback": [...]}``).

Every finding is a string ``"<json path>: <message>"``, e.g. ``"cards[0].indicator: required"``.
The path ``$`` stands for the document itself. An empty list means the document conforms.

Objects defined by CDS Hooks (cards, sources, suggestions, actions, links, codings, services,
feedback entries...) are checked member by member, including the rule that no member may be
``null``, ``""``, ``[]`` or ``{}`` (the only exceptions: ``"cards": []`` in a response and
``"services": []`` in a discovery document). The content of FHIR resources and of ``extension``
objects is not CDS Hooks data and is only checked where the specification says something about it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import urlsplit

__all__ = [
    "MAX_SUMMARY_CHARS",
    "response_warnings",
    "validate_discovery",
    "validate_feedback",
    "validate_response",
]

#: A card summary must be *fewer than* 140 characters.
MAX_SUMMARY_CHARS = 139

_INDICATORS = ("info", "warning", "critical")
_SELECTION_BEHAVIORS = ("at-most-one", "any")
_ACTION_TYPES = ("create", "update", "delete")
_LINK_TYPES = ("absolute", "smart")
_OUTCOMES = ("accepted", "overridden")
_RESPONSE_MEMBERS = frozenset({"cards", "systemActions", "extension"})
_CARD_MARKERS = ("summary", "indicator", "source", "detail", "suggestions", "links")

#: Prefetch tokens for the authenticated user, new in 2.0.
_USER_TOKENS = frozenset(
    {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
)
#: Context fields marked "Prefetch Token: Yes" by CDS Hooks Library 1.0.1, for the hooks it defines
#: that the checklist names. Other hooks only get the shape check.
_HOOK_PREFETCH_FIELDS: Mapping[str, frozenset[str]] = {
    hook: frozenset({"userId", "patientId", "encounterId"})
    for hook in (
        "patient-view",
        "order-select",
        "order-sign",
        "encounter-start",
        "encounter-discharge",
    )
}

_TEMPLATE_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_CONTEXT_TOKEN = re.compile(r"context\.([A-Za-z_][A-Za-z0-9_]*)")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
_FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_REFERENCE = re.compile(rf"[A-Z][A-Za-z]+/{_FHIR_ID}(?:/_history/{_FHIR_ID})?")
_URL_SEGMENT = re.compile(r"[A-Za-z0-9\-._~]+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))"
)


# --------------------------------------------------------------------------- reporting helpers

#: Python type of a parsed JSON value -> JSON type name (bool before int: bool is an int).
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "number"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


class _Report:
    """Collects problems (non-conformance) and warnings (legal but ill-advised) with their paths."""

    __slots__ = ("problems", "warnings")

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '$'}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path or '$'}: {message}")


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    """The JSON type name of a parsed value."""
    if value is None:
        return "null"
    for python_type, name in _JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _empty_form(value: object) -> str | None:
    """How an empty value is written in JSON (``null``, ``""``, ``[]``, ``{}``), else None."""
    if value is None:
        return "null"
    if isinstance(value, str) and not value:
        return '""'
    if isinstance(value, list) and not value:
        return "[]"
    if isinstance(value, dict) and not value:
        return "{}"
    return None


def _as_object(value: object, path: str, r: _Report, what: str) -> dict[str, object] | None:
    if isinstance(value, dict):
        return value
    r.problem(path, f"must be {what} (a JSON object), got {_kind(value)}")
    return None


def _members(
    obj: Mapping[str, object],
    path: str,
    r: _Report,
    required: Iterable[str] = (),
    empty_array_ok: str | None = None,
) -> dict[str, object]:
    """Check for empty and missing members; return the members that deserve further checks.

    ``empty_array_ok`` names the one member (if any) that may be an empty array.
    """
    required = tuple(required)
    usable: dict[str, object] = {}
    for key, value in obj.items():
        empty = _empty_form(value)
        if empty is not None and not (key == empty_array_ok and empty == "[]"):
            if key in required:
                r.problem(_child(path, key), f"required, and must not be {empty}")
            else:
                r.problem(_child(path, key), f"must be omitted rather than sent as {empty}")
            continue
        usable[str(key)] = value
    for key in required:
        if key not in obj:
            r.problem(_child(path, key), "required")
    return usable


def _string(fields: Mapping[str, object], key: str, path: str, r: _Report) -> str | None:
    """The member as a non-blank string, or None (absent, or reported as wrong)."""
    if key not in fields:
        return None
    value = fields[key]
    if not isinstance(value, str):
        r.problem(_child(path, key), f"must be a string, got {_kind(value)}")
        return None
    if not value.strip():
        r.problem(_child(path, key), "must not be blank")
        return None
    return value


def _choice(
    fields: Mapping[str, object], key: str, path: str, r: _Report, allowed: tuple[str, ...]
) -> str | None:
    value = _string(fields, key, path, r)
    if value is None:
        return None
    if value not in allowed:
        r.problem(_child(path, key), f"must be one of {' | '.join(allowed)}, got {value!r}")
        return None
    return value


def _boolean(fields: Mapping[str, object], key: str, path: str, r: _Report) -> bool | None:
    if key not in fields:
        return None
    value = fields[key]
    if not isinstance(value, bool):
        r.problem(_child(path, key), f"must be a boolean, got {_kind(value)}")
        return None
    return value


def _array(fields: Mapping[str, object], key: str, path: str, r: _Report) -> list[object] | None:
    if key not in fields:
        return None
    value = fields[key]
    if not isinstance(value, list):
        r.problem(_child(path, key), f"must be an array, got {_kind(value)}")
        return None
    return value


def _absolute_url(fields: Mapping[str, object], key: str, path: str, r: _Report) -> str | None:
    value = _string(fields, key, path, r)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        r.problem(_child(path, key), f"must be an absolute http(s) URL, got {value!r}")
        return None
    return value


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_extension(fields: Mapping[str, object], path: str, r: _Report) -> dict[str, object]:
    """``extension`` must be an object; its keys SHOULD be reverse-domain names."""
    if "extension" not in fields:
        return {}
    p = _child(path, "extension")
    ext = _as_object(fields["extension"], p, r, "an extension object")
    if ext is None:
        return {}
    for key in ext:
        if key != "systemActions" and "." not in str(key):
            r.warn(
                _child(p, str(key)),
                "extension names should be globally unique, e.g. reverse-domain (org.example.x)",
            )
    return ext


def _check_coding(value: object, path: str, r: _Report, *, display_required: bool) -> None:
    """A CDS Hooks Coding: ``code`` and ``system`` REQUIRED, ``display`` CONDITIONAL."""
    obj = _as_object(value, path, r, "a Coding")
    if obj is None:
        return
    # A service MUST give each of its overrideReasons a display; elsewhere display is optional.
    required = ("code", "system", "display") if display_required else ("code", "system")
    fields = _members(obj, path, r, required=required)
    for key in ("code", "system", "display"):
        _string(fields, key, path, r)
    _check_extension(fields, path, r)


# --------------------------------------------------------------------------- response


def _check_resource(value: object, path: str, r: _Report, action_type: str) -> None:
    """The FHIR resource of a create/update action: an object with a ``resourceType``."""
    res = _as_object(value, path, r, f"a whole FHIR resource for a {action_type} action")
    if res is None:
        return
    resource_type = res.get("resourceType")
    if "resourceType" not in res:
        r.problem(_child(path, "resourceType"), "required in a FHIR resource")
    elif not isinstance(resource_type, str) or not _RESOURCE_TYPE.fullmatch(resource_type):
        r.problem(_child(path, "resourceType"), f"not a FHIR resource type: {resource_type!r}")
    if action_type == "update" and "id" not in res:
        r.warn(_child(path, "id"), "an update action's resource should carry its id")


def _check_delete_target(
    obj: Mapping[str, object], fields: Mapping[str, object], path: str, r: _Report
) -> None:
    if "resourceId" in obj:
        return  # checked (or reported as empty) by the caller
    if "resource" not in obj:
        r.problem(
            _child(path, "resourceId"),
            "required for a delete action (a relative reference such as ServiceRequest/123)",
        )
        return
    if "resource" not in fields:
        return  # empty; already reported
    resource = fields["resource"]
    r.warn(_child(path, "resource"), "deprecated for delete actions; use resourceId instead")
    if isinstance(resource, dict):
        _check_resource(resource, _child(path, "resource"), r, "delete")
    elif not isinstance(resource, str):
        r.problem(
            _child(path, "resource"), f"must be a string id or a resource, got {_kind(resource)}"
        )


def _check_action(value: object, path: str, r: _Report) -> None:
    """An Action (in a suggestion or in ``systemActions``)."""
    obj = _as_object(value, path, r, "an Action")
    if obj is None:
        return
    fields = _members(obj, path, r, required=("type", "description"))
    action_type = _choice(fields, "type", path, r, _ACTION_TYPES)
    _string(fields, "description", path, r)
    reference = _string(fields, "resourceId", path, r)
    if reference is not None and not _RELATIVE_REFERENCE.fullmatch(reference):
        r.problem(
            _child(path, "resourceId"),
            f"must be a relative reference such as ServiceRequest/123, got {reference!r}",
        )
    if action_type in ("create", "update"):
        if "resource" not in obj:
            r.problem(_child(path, "resource"), f"required for a {action_type} action")
        elif "resource" in fields:
            _check_resource(fields["resource"], _child(path, "resource"), r, action_type)
    elif action_type == "delete":
        _check_delete_target(obj, fields, path, r)
    _check_extension(fields, path, r)


def _check_actions(fields: Mapping[str, object], key: str, path: str, r: _Report) -> None:
    actions = _array(fields, key, path, r)
    for i, action in enumerate(actions or ()):
        _check_action(action, f"{_child(path, key)}[{i}]", r)


def _check_source(value: object, path: str, r: _Report) -> None:
    obj = _as_object(value, path, r, "a Source")
    if obj is None:
        return
    fields = _members(obj, path, r, required=("label",))
    _string(fields, "label", path, r)
    _absolute_url(fields, "url", path, r)
    _absolute_url(fields, "icon", path, r)
    if "topic" in fields:
        _check_coding(fields["topic"], _child(path, "topic"), r, display_required=False)
    _check_extension(fields, path, r)


def _check_uuid_member(
    obj: Mapping[str, object],
    fields: Mapping[str, object],
    path: str,
    r: _Report,
    seen: dict[str, str],
    *,
    what: str,
) -> None:
    """Optional ``uuid`` of a card or suggestion: the only handle feedback can use."""
    p = _child(path, "uuid")
    if "uuid" not in obj:
        r.warn(p, f"missing: the client sends no feedback for a {what} without a uuid")
        return
    value = _string(fields, "uuid", path, r)
    if value is None:
        return
    if not _is_uuid(value):
        r.warn(p, f"{value!r} is not a UUID; a random (v4) UUID is recommended")
    if value in seen:
        r.problem(p, f"duplicate {what} uuid {value!r} (also at {seen[value]})")
    else:
        seen[value] = path


def _check_suggestion(value: object, path: str, r: _Report, seen: dict[str, str]) -> bool:
    """Check one suggestion; return whether it is marked ``isRecommended``."""
    obj = _as_object(value, path, r, "a Suggestion")
    if obj is None:
        return False
    fields = _members(obj, path, r, required=("label",))
    _string(fields, "label", path, r)
    _check_uuid_member(obj, fields, path, r, seen, what="suggestion")
    recommended = _boolean(fields, "isRecommended", path, r)
    _check_actions(fields, "actions", path, r)
    _check_extension(fields, path, r)
    return recommended is True


def _check_suggestions(
    obj: Mapping[str, object], fields: Mapping[str, object], path: str, r: _Report
) -> None:
    behavior = _choice(fields, "selectionBehavior", path, r, _SELECTION_BEHAVIORS)
    if "suggestions" not in obj:
        if "selectionBehavior" in obj:
            r.warn(_child(path, "selectionBehavior"), "has no effect on a card without suggestions")
        return
    suggestions = _array(fields, "suggestions", path, r)
    if suggestions is None:
        return  # empty (already reported) or not an array
    if "selectionBehavior" not in obj:
        r.problem(
            _child(path, "selectionBehavior"),
            "required when suggestions are present (at-most-one | any)",
        )
    seen: dict[str, str] = {}
    recommended = 0
    for i, suggestion in enumerate(suggestions):
        recommended += _check_suggestion(suggestion, f"{_child(path, 'suggestions')}[{i}]", r, seen)
    if behavior == "at-most-one" and recommended > 1:
        r.warn(
            _child(path, "suggestions"),
            "several suggestions are isRecommended, but selectionBehavior is at-most-one",
        )


def _check_link(value: object, path: str, r: _Report) -> None:
    obj = _as_object(value, path, r, "a Link")
    if obj is None:
        return
    fields = _members(obj, path, r, required=("label", "url", "type"))
    _string(fields, "label", path, r)
    _absolute_url(fields, "url", path, r)
    link_type = _choice(fields, "type", path, r, _LINK_TYPES)
    if "appContext" in obj and link_type == "absolute":
        r.problem(_child(path, "appContext"), "only allowed on smart links, not on absolute links")
    _string(fields, "appContext", path, r)
    _boolean(fields, "autolaunchable", path, r)
    _check_extension(fields, path, r)


def _check_card(value: object, path: str, r: _Report, seen: dict[str, str]) -> None:
    obj = _as_object(value, path, r, "a Card")
    if obj is None:
        return
    fields = _members(obj, path, r, required=("summary", "indicator", "source"))
    _check_uuid_member(obj, fields, path, r, seen, what="card")
    summary = _string(fields, "summary", path, r)
    if summary is not None and len(summary) > MAX_SUMMARY_CHARS:
        r.problem(
            _child(path, "summary"),
            f"must be fewer than 140 characters, has {len(summary)}",
        )
    _choice(fields, "indicator", path, r, _INDICATORS)
    if "source" in fields:
        _check_source(fields["source"], _child(path, "source"), r)
    _string(fields, "detail", path, r)
    _check_suggestions(obj, fields, path, r)
    reasons = _array(fields, "overrideReasons", path, r)
    for i, reason in enumerate(reasons or ()):
        _check_coding(reason, f"{_child(path, 'overrideReasons')}[{i}]", r, display_required=True)
    links = _array(fields, "links", path, r)
    for i, link in enumerate(links or ()):
        _check_link(link, f"{_child(path, 'links')}[{i}]", r)
    _check_extension(fields, path, r)


def _check_hidden_system_actions(ext: Mapping[str, object], r: _Report) -> None:
    """Pre-2.0 habit: ``extension.systemActions``. Legal, but a 2.0 client ignores it."""
    if "systemActions" not in ext:
        return
    r.warn(
        "extension.systemActions",
        "systemActions hidden in an extension are ignored by CDS Hooks 2.0 clients; "
        "put them in the top-level systemActions array",
    )
    # What these actions would need to be valid at the top level: reported as warnings only,
    # since the content of an extension is not CDS Hooks data.
    hidden = _Report()
    _check_actions(ext, "systemActions", "extension", hidden)
    r.warnings.extend(hidden.problems)
    r.warnings.extend(hidden.warnings)


def _check_response(doc: object) -> _Report:
    r = _Report()
    obj = _as_object(doc, "", r, 'a CDS service response, {"cards": [...]}')
    if obj is None:
        return r
    if "cards" not in obj and any(key in obj for key in _CARD_MARKERS):
        r.problem(
            "cards",
            'required (this document is a bare card, but a response is {"cards": [<card>...]})',
        )
        _check_card(obj, "", r, {})
        return r
    fields = _members(obj, "", r, required=("cards",), empty_array_ok="cards")
    cards = _array(fields, "cards", "", r)
    seen: dict[str, str] = {}
    for i, card in enumerate(cards or ()):
        _check_card(card, f"cards[{i}]", r, seen)
    _check_actions(fields, "systemActions", "", r)
    _check_hidden_system_actions(_check_extension(fields, "", r), r)
    for key in obj:
        if key not in _RESPONSE_MEMBERS:
            r.warn(
                str(key),
                "not a CDS Hooks 2.0.1 response member (custom data belongs under extension)",
            )
    return r


# --------------------------------------------------------------------------- discovery


def _check_template(template: str, path: str, hook: str | None, r: _Report) -> None:
    """Prefetch tokens: ``{{context.<field>}}`` or one of the four ``{{user...}}`` tokens."""
    for match in _TEMPLATE_TOKEN.finditer(template):
        token = match.group(1)
        context = _CONTEXT_TOKEN.fullmatch(token)
        if token in _USER_TOKENS:
            continue
        if context is None:
            r.problem(
                path,
                f"invalid prefetch token {match.group(0)}: CDS Hooks 2.0 allows only "
                "{{context.<field>}} (a first-level field) and {{userPractitionerId}}, "
                "{{userPractitionerRoleId}}, {{userPatientId}}, {{userRelatedPersonId}}",
            )
            continue
        allowed = _HOOK_PREFETCH_FIELDS.get(hook or "")
        if allowed is not None and context.group(1) not in allowed:
            r.problem(
                path,
                f"{match.group(0)}: {hook} does not mark context.{context.group(1)} as a "
                f"prefetch token (allowed: {', '.join(sorted(allowed))})",
            )
    leftover = _TEMPLATE_TOKEN.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        r.problem(path, f"unbalanced token braces in prefetch template {template!r}")


def _check_prefetch(value: object, path: str, hook: str | None, r: _Report) -> None:
    obj = _as_object(value, path, r, "an object of prefetch key to template string")
    if obj is None:
        return
    fields = _members(obj, path, r)
    for key in fields:
        template = _string(fields, key, path, r)
        if template is not None:
            _check_template(template, _child(path, key), hook, r)


def _check_service(value: object, path: str, r: _Report, seen: dict[tuple[str, str], str]) -> None:
    obj = _as_object(value, path, r, "a CDS Service description")
    if obj is None:
        return
    fields = _members(obj, path, r, required=("hook", "id", "description"))
    hook = _string(fields, "hook", path, r)
    service_id = _string(fields, "id", path, r)
    _string(fields, "description", path, r)
    _string(fields, "usageRequirements", path, r)
    if "title" not in obj:
        r.warn(_child(path, "title"), "RECOMMENDED")
    _string(fields, "title", path, r)
    if service_id is not None and not _URL_SEGMENT.fullmatch(service_id):
        r.warn(_child(path, "id"), f"{service_id!r} is not a plain URL path segment")
    if hook is not None and service_id is not None:
        if (hook, service_id) in seen:
            r.problem(
                path,
                f"duplicate service id {service_id!r} for hook {hook!r} "
                f"(also at {seen[hook, service_id]})",
            )
        else:
            seen[hook, service_id] = path
    if "prefetch" in fields:
        _check_prefetch(fields["prefetch"], _child(path, "prefetch"), hook, r)
    _check_extension(fields, path, r)


def _check_discovery(doc: object) -> _Report:
    r = _Report()
    obj = _as_object(doc, "", r, 'a discovery document, {"services": [...]}')
    if obj is None:
        return r
    fields = _members(obj, "", r, required=("services",), empty_array_ok="services")
    services = _array(fields, "services", "", r)
    seen: dict[tuple[str, str], str] = {}
    for i, service in enumerate(services or ()):
        _check_service(service, f"services[{i}]", r, seen)
    _check_extension(fields, "", r)
    return r


# --------------------------------------------------------------------------- feedback


def _check_timestamp(fields: Mapping[str, object], key: str, path: str, r: _Report) -> None:
    value = _string(fields, key, path, r)
    if value is None:
        return
    p = _child(path, key)
    match = _RFC3339.fullmatch(value)
    if match is None:
        r.problem(
            p,
            "must be an RFC 3339 date-time with a time zone (e.g. 2021-12-11T10:05:31Z), "
            f"got {value!r}",
        )
        return
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    try:
        # A leap second (:60) is valid RFC 3339 but not a valid datetime.
        datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError:
        r.problem(p, f"not a real date and time: {value!r}")
        return
    if second > 60 or (
        match["oh"] is not None and (int(match["oh"]) > 23 or int(match["om"]) > 59)
    ):
        r.problem(p, f"not a real date and time: {value!r}")
    elif match["utc"] is None and (match["oh"], match["om"]) != ("00", "00"):
        r.warn(p, "should be in UTC (Z)")


def _check_accepted(fields: Mapping[str, object], path: str, r: _Report) -> None:
    accepted = _array(fields, "acceptedSuggestions", path, r)
    for i, item in enumerate(accepted or ()):
        p = f"{_child(path, 'acceptedSuggestions')}[{i}]"
        obj = _as_object(item, p, r, 'an AcceptedSuggestion, {"id": <suggestion uuid>}')
        if obj is not None:
            _string(_members(obj, p, r, required=("id",)), "id", p, r)


def _check_override_reason(value: object, path: str, r: _Report) -> None:
    obj = _as_object(value, path, r, "an OverrideReason")
    if obj is None:
        return
    fields = _members(obj, path, r)
    if "reason" in fields:
        _check_coding(fields["reason"], _child(path, "reason"), r, display_required=False)
    _string(fields, "userComment", path, r)
    if obj and "reason" not in obj and "userComment" not in obj:
        r.problem(path, "needs a reason (Coding) and/or a userComment")
    _check_extension(fields, path, r)


def _check_feedback_entry(value: object, path: str, r: _Report) -> None:
    obj = _as_object(value, path, r, "a Feedback entry")
    if obj is None:
        return
    fields = _members(obj, path, r, required=("card", "outcome", "outcomeTimestamp"))
    _string(fields, "card", path, r)
    outcome = _choice(fields, "outcome", path, r, _OUTCOMES)
    _check_timestamp(fields, "outcomeTimestamp", path, r)
    if outcome == "accepted" and "acceptedSuggestions" not in obj:
        r.problem(_child(path, "acceptedSuggestions"), "required when outcome is accepted")
    if outcome == "overridden" and "acceptedSuggestions" in obj:
        r.problem(_child(path, "acceptedSuggestions"), "only allowed when outcome is accepted")
    if outcome == "accepted" and "overrideReason" in obj:
        r.problem(_child(path, "overrideReason"), "only allowed when outcome is overridden")
    _check_accepted(fields, path, r)
    if "overrideReason" in fields:
        _check_override_reason(fields["overrideReason"], _child(path, "overrideReason"), r)
    _check_extension(fields, path, r)


def _check_feedback(doc: object) -> _Report:
    r = _Report()
    obj = _as_object(doc, "", r, 'a feedback body, {"feedback": [...]}')
    if obj is None:
        return r
    fields = _members(obj, "", r, required=("feedback",))
    entries = _array(fields, "feedback", "", r)
    for i, entry in enumerate(entries or ()):
        _check_feedback_entry(entry, f"feedback[{i}]", r)
    _check_extension(fields, "", r)
    return r


# --------------------------------------------------------------------------- public API


def validate_response(doc: object) -> list[str]:
    """Problems that make ``doc`` a non-conforming CDS service response; empty if it conforms."""
    return _check_response(doc).problems


def response_warnings(doc: object) -> list[str]:
    """Non-fatal findings in a CDS service response (missing uuids, hidden systemActions...)."""
    return _check_response(doc).warnings


def validate_discovery(doc: object) -> list[str]:
    """Problems that make ``doc`` a non-conforming discovery document; empty if it conforms."""
    return _check_discovery(doc).problems


def validate_feedback(doc: object) -> list[str]:
    """Problems that make ``doc`` a non-conforming feedback body; empty if it conforms."""
    return _check_feedback(doc).problems
