"""The lifecycle policy file: promotion gates, drift thresholds and window, canary share."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds_service.drift.statistics import Thresholds


class Gates(BaseModel):
    """What a version's own validation figures must reach before its cards are shown."""

    model_config = ConfigDict(extra="forbid")
    min_auroc: float = Field(ge=0.5, le=1)
    min_normalized_utility: float = Field(ge=-1, le=1)
    calibration_slope: tuple[float, float]
    max_alerts_per_100_patient_days: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Gates:
        low, high = self.calibration_slope
        if not 0 < low < high:
            raise ValueError("calibration_slope is [low, high] with 0 < low < high")
        return self


class DriftPolicy(Thresholds):
    """The drift thresholds (``Thresholds``) and the window they are judged over."""

    model_config = ConfigDict(extra="forbid")
    window_hours: int = Field(default=24, ge=1, le=24 * 7)
    check_interval_s: float = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _warn_below_act(self) -> DriftPolicy:
        pairs = (
            (self.psi_warn, self.psi_act),
            (self.wasserstein_warn, self.wasserstein_act),
            (self.missing_delta_warn, self.missing_delta_act),
            (self.alert_rate_warn_ratio, self.alert_rate_act_ratio),
        )
        if any(not 0 < warn <= act for warn, act in pairs):
            raise ValueError("every warn threshold is positive and at most its act threshold")
        return self

    def thresholds(self) -> Thresholds:
        return Thresholds.model_validate(self.model_dump(include=set(Thresholds.model_fields)))


class CanaryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    share: float = Field(default=0.1, gt=0, lt=1)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gates: Gates
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)


class PolicyError(ValueError):
    """The policy file is missing or does not validate: the service must not start on it."""


def load_policy(path: Path) -> Policy:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PolicyError(f"no lifecycle policy at {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path} is not TOML: {exc}") from exc
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{path} does not validate: {exc}") from exc
