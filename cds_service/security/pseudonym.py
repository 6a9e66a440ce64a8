"""Keyed pseudonyms for identifiers that must be stored or counted (house rule 5)."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr


class Pseudonymiser:
    """HMAC-SHA256 of ``kind:value`` under a secret key.

    The kind separates domains, so a patient id and a user id that happen to be equal get unrelated
    pseudonyms. Without the key a pseudonym cannot be reversed or recomputed from a guessed id.
    """

    def __init__(self, key: SecretStr) -> None:
        self._key = key.get_secret_value().encode()

    def pseudonym(self, kind: str, value: str) -> str:
        digest = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256)
        # 128 bits: collision-free for any census while keeping Redis keys short.
        return digest.hexdigest()[:32]
