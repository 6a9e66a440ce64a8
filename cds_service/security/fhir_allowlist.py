"""Where a request's ``fhirAuthorization`` token may go (CDS Hooks §FHIR Resource Access).

A token goes only to the ``fhirServer`` it came with, and only when that server is allow-listed.
Comparison is exact on the normalised base URL, never a prefix match: a prefix match would let
``https://ehr.example.org.attacker.net`` or ``https://ehr.example.org/../other`` through.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from cds_service.settings import FhirSettings, normalise_base_url


@dataclass(frozen=True)
class FhirAccess:
    """Permission to call one FHIR server, with the token (if any) the EHR granted for it."""

    base_url: str
    token: SecretStr | None


def fhir_access_for(
    fhir_server: str | None, token: SecretStr | None, settings: FhirSettings
) -> FhirAccess | None:
    """The access this request grants, or None when the service must work from prefetch alone."""
    if fhir_server is None:
        return None
    try:
        base = normalise_base_url(fhir_server)
    except ValueError:
        return None
    if base not in settings.allowed_servers:
        return None
    return FhirAccess(base_url=base, token=token)
