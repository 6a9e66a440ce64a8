"""A local development signing key that stands in for an EHR, and the tokens it mints.

`make run` creates it on first start and trusts it loudly; production never does (the dev runner
is the only caller, and it forces ``environment=development``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DEV_ISSUER = "urn:sepsis-cds:local-development-ehr"


@dataclass(frozen=True)
class DevKeys:
    private_key_path: Path
    jwks_path: Path
    kid: str

    def mint(self, audience: str, lifetime_s: int = 300, tenant: str | None = None) -> str:
        """A CDS Hooks client JWT (§Trusting CDS Clients) for one URL."""
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": DEV_ISSUER,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": str(uuid.uuid4()),
        }
        if tenant:
            claims["tenant"] = tenant
        private = serialization.load_pem_private_key(
            self.private_key_path.read_bytes(), password=None
        )
        headers = {"kid": self.kid, "typ": "JWT"}
        return jwt.encode(claims, private, algorithm="ES384", headers=headers)  # type: ignore[arg-type]


def ensure_dev_keys(directory: Path) -> tuple[DevKeys, bool]:
    """Load the key pair in ``directory``, creating it first if absent; True when created now."""
    private_path = directory / "dev-ehr-es384.pem"
    jwks_path = directory / "dev-ehr-jwks.json"
    created = False
    if not private_path.exists() or not jwks_path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": f"dev-{uuid.uuid4()}", "alg": "ES384", "use": "sig"})
        jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2))
        created = True
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    return DevKeys(private_key_path=private_path, jwks_path=jwks_path, kid=kid), created
