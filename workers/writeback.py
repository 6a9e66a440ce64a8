"""The FHIR R4 RiskAssessment the workers write back when a patient crosses the alert level.

One resource per patient and model family, found again by its identifier (our system, the
patient's pseudonym — not an identifier of the patient anywhere else) and updated in place by a
conditional update, so the EHR shows one current risk between hook calls and not a pile of them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cds_service.inference.registry import LoadedModel
from cds_service.scores import iso_utc

IDENTIFIER_SYSTEM = "https://sepsis-cds.example.org/fhir/sid/risk-assessment"
MODEL_SYSTEM = "https://sepsis-cds.example.org/CodeSystem/model-version"


def risk_assessment(
    pseudonym: str,
    *,
    patient_id: str,
    encounter_id: str | None,
    risk: float,
    model: LoadedModel,
    now: datetime | None = None,
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    points = model.entry.operating_points
    above = risk >= points.utility_optimal
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": pseudonym}],
        "status": "final",
        "subject": {"reference": f"Patient/{patient_id}"},
        "occurrenceDateTime": iso_utc(now),
        "code": {"text": "Sepsis risk (early warning model)"},
        "method": {
            "coding": [{"system": MODEL_SYSTEM, "code": model.version}],
            "text": f"Sepsis early warning model {model.version}",
        },
        "basis": [{"display": "Vital signs and laboratory values of the last 72 hours"}],
        "prediction": [
            {
                "outcome": {"text": model.entry.outcome},
                "probabilityDecimal": round(risk, 4),
                "rationale": (
                    f"{'At or above' if above else 'Below'} the model's alert level of "
                    f"{points.utility_optimal:.3f} (model card, operating points)."
                ),
            }
        ],
        "note": [{"text": "Decision support, not a diagnosis: see the model card for its limits."}],
    }
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return resource
