"""The CDS services this product offers, as discovery lists them (CDS Hooks 2.0.1 §Discovery).

Prefetch tokens cannot say "the last 24 hours" (§Prefetch query restrictions allow only
``eq|lt|gt|ge|le`` against fixed dates), so observation templates ask for the newest ones with
``_sort=-date&_count=N`` and the service trims by time itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cds_service.hooks_models import DiscoveryResponse, ServiceDescriptor


@dataclass(frozen=True)
class PrefetchTemplate:
    """One prefetch key: its FHIR query and whether the service can answer at all without it."""

    query: str
    required: bool
    #: what the key must hold when present: a resource type for a read, "Bundle" for a search
    resource_type: str


PATIENT = PrefetchTemplate("Patient/{{context.patientId}}", required=True, resource_type="Patient")
# About 24 h of hourly ICU vital signs (8 vitals an hour); labs are sparser.
VITALS = PrefetchTemplate(
    "Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date&_count=200",
    required=True,
    resource_type="Bundle",
)
LABS = PrefetchTemplate(
    "Observation?patient={{context.patientId}}&category=laboratory&_sort=-date&_count=100",
    required=False,
    resource_type="Bundle",
)
# patient-view has no required encounterId, so the current inpatient stay is searched for.
ACTIVE_ENCOUNTER = PrefetchTemplate(
    "Encounter?patient={{context.patientId}}&status=in-progress&_sort=-date&_count=1",
    required=False,
    resource_type="Bundle",
)
# Pregnancy (NEWS2 is not validated in it) and an SpO2 target range (NEWS2 Scale 2).
CONDITIONS = PrefetchTemplate(
    "Condition?patient={{context.patientId}}&clinical-status=active",
    required=False,
    resource_type="Bundle",
)
GOALS = PrefetchTemplate(
    "Goal?patient={{context.patientId}}&lifecycle-status=active",
    required=False,
    resource_type="Bundle",
)
CONTEXT_ENCOUNTER = PrefetchTemplate(
    "Encounter/{{context.encounterId}}", required=False, resource_type="Encounter"
)

_USAGE = (
    "Calls must carry a JWT signed with ES384 or RS384 by an allow-listed issuer. Data not "
    "prefetched is read from fhirServer only if that server is allow-listed; grant patient/ or "
    "user/ read scopes on Patient, Encounter and Observation."
)
_SEPSIS_LIMITS = (
    "Scores adults in an ICU stay only, the population the model was trained and validated in "
    "(PhysioNet 2019); other patients get no card. Each card links the model card of its version."
)


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, PrefetchTemplate] = field(default_factory=dict)

    def descriptor(self) -> ServiceDescriptor:
        return ServiceDescriptor(
            hook=self.hook,
            id=self.id,
            title=self.title,
            description=self.description,
            prefetch={key: template.query for key, template in self.prefetch.items()} or None,
            usageRequirements=_USAGE,
        )


def _sepsis(
    service_id: str, hook: str, title: str, what: str, encounter: PrefetchTemplate
) -> CdsService:
    return CdsService(
        id=service_id,
        hook=hook,
        title=title,
        description=f"{what} {_SEPSIS_LIMITS}",
        prefetch={"patient": PATIENT, "encounter": encounter, "vitals": VITALS, "labs": LABS},
    )


SERVICES: tuple[CdsService, ...] = (
    _sepsis(
        "sepsis-patient-view",
        "patient-view",
        "Sepsis early warning",
        "Estimates the risk that the patient meets Sepsis-3 within about 6 hours, with the "
        "patient's own values that drive it and a suggested hour-1 order set.",
        ACTIVE_ENCOUNTER,
    ),
    _sepsis(
        "sepsis-order-select",
        "order-select",
        "Sepsis risk while ordering",
        "Shows the sepsis risk and missing sepsis work-up (lactate, blood cultures before "
        "antibiotics) while orders are being selected.",
        ACTIVE_ENCOUNTER,
    ),
    _sepsis(
        "sepsis-order-sign",
        "order-sign",
        "Sepsis check at order signing",
        "Checks the orders being signed against the patient's sepsis risk, e.g. antibiotics "
        "without blood cultures drawn first.",
        ACTIVE_ENCOUNTER,
    ),
    _sepsis(
        "sepsis-encounter-start",
        "encounter-start",
        "Sepsis screen at admission",
        "Screens a newly started encounter for sepsis risk from the data available at admission.",
        CONTEXT_ENCOUNTER,
    ),
    _sepsis(
        "sepsis-encounter-discharge",
        "encounter-discharge",
        "Discharge safety check",
        "Warns before discharge when recent vital signs or labs point to possible sepsis or "
        "deterioration.",
        CONTEXT_ENCOUNTER,
    ),
    CdsService(
        id="deterioration-patient-view",
        hook="patient-view",
        title="Deterioration early warning (NEWS2)",
        description=(
            "National Early Warning Score 2 (Royal College of Physicians, 2017) from the patient's "
            "own recent vital signs, for adults who are not pregnant: a warning card at 5-6 or a "
            "single parameter scoring 3, a critical card at 7 or more, each parameter listed."
        ),
        prefetch={
            "patient": PATIENT,
            "encounter": ACTIVE_ENCOUNTER,
            "vitals": VITALS,
            "conditions": CONDITIONS,
            "goals": GOALS,
        },
    ),
)


class Catalogue:
    """Lookup of services by id; one instance per app."""

    def __init__(self, services: tuple[CdsService, ...] = SERVICES) -> None:
        self._by_id = {service.id: service for service in services}

    def get(self, service_id: str) -> CdsService | None:
        return self._by_id.get(service_id)

    def discovery(self) -> DiscoveryResponse:
        return DiscoveryResponse(services=[s.descriptor() for s in self._by_id.values()])
