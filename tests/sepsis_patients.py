"""Real ICU patients from PhysioNet 2019 set A, sent to the service as FHIR hook calls.

``find_cases`` scores patients the way training does (PSV rows → ``training.dataset``'s features →
the active model) and picks one whose newest hour is at or above the alert level and one below
the high-sensitivity level. ``hook_request`` sends the newest 72 hours of that patient as a
prefetch, timed so that the patient's last PSV row is the current hour: the service must then
find the same risk through FHIR, Redis and its own feature code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from cds_service.features import LOOKBACK_HOURS
from cds_service.inference.registry import LoadedModel
from training.challenge_rows import PsvPatient, iter_patients, to_fhir_observations
from training.dataset import patient_features

from support import SHARED

ARCHIVES = SHARED / "data" / "physionet2019"
SET_A = ARCHIVES / "training_setA.zip"
NO_PHYSIONET = f"no PhysioNet 2019 data at {ARCHIVES}"
MODEL_ROOT = Path(__file__).resolve().parents[1] / "model_artifacts"


@dataclass(frozen=True)
class SepsisCase:
    patient: PsvPatient
    #: the training-path calibrated risk of the patient's last PSV row
    risk: float

    @property
    def hours(self) -> int:
        return int(self.patient.iculos[-1])


def find_cases(model: LoadedModel, limit: int = 400) -> tuple[SepsisCase, SepsisCase]:
    """(high, low): adults with at least 24 ICU hours, the newest hour at or above the alert
    level, and below the high-sensitivity level."""
    points = model.entry.operating_points
    high: SepsisCase | None = None
    low: SepsisCase | None = None
    for patient in iter_patients(SET_A, limit=limit):
        if patient.age < 18 or len(patient.iculos) < 24:
            continue
        rows, _ = patient_features(patient)
        risk = float(model.predict(rows[-1:].astype(np.float32))[0])
        if high is None and risk >= points.utility_optimal * 1.5:
            high = SepsisCase(patient, risk)
        if low is None and risk < points.high_sensitivity * 0.5:
            low = SepsisCase(patient, risk)
        if high is not None and low is not None:
            return high, low
    raise AssertionError(f"no high- and low-risk adults among the first {limit} patients")


def icu_start_for(case: SepsisCase, now: datetime) -> datetime:
    """An ICU admission that puts the last PSV row (bin ICULOS) 30 minutes before ``now``."""
    return now - timedelta(hours=case.hours - 1, minutes=30)


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }


def patient_resource(case: SepsisCase, patient_id: str, now: datetime) -> dict[str, Any]:
    born = (now - timedelta(days=case.patient.age * 365.25)).date()
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "birthDate": born.isoformat(),
    }
    if case.patient.sex is not None:
        resource["gender"] = case.patient.sex
    return resource


def encounter_resource(case: SepsisCase, encounter_id: str, icu_start: datetime) -> dict[str, Any]:
    unit = {
        "MICU": "Medical Intensive Care Unit (MICU)",
        "SICU": "Surgical Intensive Care Unit (SICU)",
    }
    hospital_hours = -(case.patient.hosp_adm_hours or 0.0)
    admitted = icu_start - timedelta(hours=max(hospital_hours, 0.0))
    return {
        "resourceType": "Encounter",
        "id": encounter_id,
        "status": "in-progress",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "IMP",
        },
        "period": {"start": admitted.isoformat().replace("+00:00", "Z")},
        "location": [
            {
                "location": {
                    "display": unit.get(case.patient.unit or "", "Intensive Care Unit"),
                },
                "status": "active",
                "period": {"start": icu_start.isoformat().replace("+00:00", "Z")},
            }
        ],
    }


def hook_request(
    case: SepsisCase,
    *,
    hook: str = "patient-view",
    patient_id: str | None = None,
    now: datetime | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A hook call whose prefetch holds the patient's newest 72 h of observations."""
    now = now or datetime.now(UTC)
    patient_id = patient_id or f"sepsis-{uuid.uuid4().hex[:12]}"
    icu_start = icu_start_for(case, now)
    observations = to_fhir_observations(case.patient, icu_start, f"Patient/{patient_id}")
    oldest = now - timedelta(hours=LOOKBACK_HOURS)
    recent = [
        o
        for o in observations
        if datetime.fromisoformat(o["effectiveDateTime"].replace("Z", "+00:00")) >= oldest
    ]
    vitals = [o for o in recent if o["category"][0]["coding"][0]["code"] == "vital-signs"]
    labs = [o for o in recent if o["category"][0]["coding"][0]["code"] == "laboratory"]
    encounter_id = f"enc-{patient_id}"
    encounter = encounter_resource(case, encounter_id, icu_start)
    base_context: dict[str, Any] = {
        "userId": "Practitioner/example",
        "patientId": patient_id,
        "encounterId": encounter_id,
    }
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {**base_context, **(context or {})},
        "prefetch": {
            "patient": patient_resource(case, patient_id, now),
            "encounter": encounter if hook.startswith("encounter-") else _bundle([encounter]),
            "vitals": _bundle(vitals),
            "labs": _bundle(labs),
        },
    }
