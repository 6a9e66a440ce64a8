from __future__ import annotations

from pydantic import SecretStr

from cds_service.security.pseudonym import Pseudonymiser


def test_pseudonyms_are_keyed_stable_and_domain_separated() -> None:
    one = Pseudonymiser(SecretStr("key-one"))
    two = Pseudonymiser(SecretStr("key-two"))
    assert one.pseudonym("patient", "123") == one.pseudonym("patient", "123")
    assert one.pseudonym("patient", "123") != two.pseudonym("patient", "123")
    assert one.pseudonym("patient", "123") != one.pseudonym("user", "123")
    assert "123" not in one.pseudonym("patient", "123")
    assert len(one.pseudonym("patient", "123")) == 32
