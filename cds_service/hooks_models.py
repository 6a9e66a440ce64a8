"""CDS Hooks 2.0.1 request, response, feedback and discovery models, and the Library 1.0.1 contexts.

Strict where the specification says REQUIRED, lenient where it says clients may send incomplete
data: ``draftOrders`` is kept as an opaque object, because the order-select hook allows draft
orders that are not yet valid FHIR and real clients (the CDS Hooks sandbox) send such orders.
Unknown fields are allowed and ignored: the spec is not prescriptive about extensions, and a 400
for an unknown field breaks interoperability (hapifhir/hapi-fhir#6262).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    StringConstraints,
    model_validator,
)

#: FHIR R4 ``id`` datatype: 1-64 of A-Z a-z 0-9 - . (FHIR R4 §2.24.0.1 Primitive types).
FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$", strict=True)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strict=True)]
HttpUrlString = Annotated[str, StringConstraints(pattern=r"^https?://\S+$", strict=True)]
#: ``userId`` of patient-view may be any of the four user types (Library 1.0.1 patient-view).
AnyUserRef = Annotated[
    str,
    StringConstraints(
        pattern=r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$",
        strict=True,
    ),
]
#: ``userId`` of the order and encounter hooks is a Practitioner or PractitionerRole.
ClinicianRef = Annotated[
    str,
    StringConstraints(
        pattern=r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$", strict=True
    ),
]


class _Lenient(BaseModel):
    """Unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Out(BaseModel):
    """Response side: nothing unexpected is emitted; unset optionals are omitted (§Use of JSON)."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- request


class FhirAuthorization(_Lenient):
    """§Passing the Access Token: all five fields REQUIRED; ``patient`` when scopes are patient/."""

    access_token: SecretStr
    token_type: Literal["Bearer"]
    expires_in: Annotated[StrictInt, Field(ge=0)]
    scope: NonEmpty
    subject: NonEmpty
    patient: FhirId | None = None


class HookRequest(_Lenient):
    """The envelope of every hook call (§Calling a CDS Service)."""

    hook: NonEmpty
    hookInstance: UUID
    fhirServer: HttpUrlString | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, dict[str, Any] | None] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is REQUIRED when fhirAuthorization is present")
        return self


class PatientViewContext(_Lenient):
    userId: AnyUserRef
    patientId: FhirId
    encounterId: FhirId | None = None


class OrderSelectContext(_Lenient):
    userId: ClinicianRef
    patientId: FhirId
    encounterId: FhirId | None = None
    selections: Annotated[list[NonEmpty], Field(min_length=1)]
    draftOrders: dict[str, Any]


class OrderSignContext(_Lenient):
    userId: ClinicianRef
    patientId: FhirId
    encounterId: FhirId | None = None
    draftOrders: dict[str, Any]


class EncounterContext(_Lenient):
    """encounter-start and encounter-discharge: all three ids REQUIRED."""

    userId: ClinicianRef
    patientId: FhirId
    encounterId: FhirId


HookContext = PatientViewContext | OrderSelectContext | OrderSignContext | EncounterContext

CONTEXT_MODELS: dict[str, type[HookContext]] = {
    "patient-view": PatientViewContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
    "encounter-start": EncounterContext,
    "encounter-discharge": EncounterContext,
}


# --------------------------------------------------------------------------- response


class Coding(_Out):
    code: NonEmpty
    system: NonEmpty
    display: NonEmpty | None = None


class OverrideReason(Coding):
    """§Reasons for rejecting a card: ``display`` is REQUIRED here, unlike in feedback."""

    display: NonEmpty


class Source(_Out):
    label: NonEmpty
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: NonEmpty
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(_Out):
    label: NonEmpty
    uuid: UUID | None = None
    isRecommended: bool | None = None
    actions: Annotated[list[Action], Field(min_length=1)] | None = None


class Link(_Out):
    label: NonEmpty
    url: NonEmpty
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _app_context_only_on_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only allowed on smart links")
        return self


class Card(_Out):
    uuid: UUID | None = None
    #: §Card Attributes: "SHOULD be fewer than 140 characters"; we hold ourselves to MUST.
    summary: Annotated[str, StringConstraints(min_length=1, max_length=139)]
    detail: NonEmpty | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: Annotated[list[Suggestion], Field(min_length=1)] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: Annotated[list[OverrideReason], Field(min_length=1)] | None = None
    links: Annotated[list[Link], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _selection_behavior(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is REQUIRED when suggestions are present")
        return self


class HookResponse(_Out):
    cards: list[Card]
    systemActions: Annotated[list[Action], Field(min_length=1)] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------- feedback


class FeedbackCoding(_Lenient):
    """In feedback the client echoes only code and system (the sandbox does): display optional."""

    code: NonEmpty
    system: NonEmpty
    display: str | None = None


class AcceptedSuggestion(_Lenient):
    id: NonEmpty


class FeedbackOverrideReason(_Lenient):
    reason: FeedbackCoding | None = None
    userComment: str | None = None


class FeedbackEntry(_Lenient):
    card: NonEmpty
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: FeedbackOverrideReason | None = None
    outcomeTimestamp: AwareDatetime

    @model_validator(mode="after")
    def _accepted_needs_suggestions(self) -> FeedbackEntry:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is REQUIRED when outcome is accepted")
        return self


class FeedbackRequest(_Lenient):
    feedback: Annotated[list[FeedbackEntry], Field(min_length=1)]


# -------------------------------------------------------------------------- discovery


class ServiceDescriptor(_Out):
    hook: NonEmpty
    title: str | None = None
    description: NonEmpty
    id: NonEmpty
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class DiscoveryResponse(_Out):
    services: list[ServiceDescriptor]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
