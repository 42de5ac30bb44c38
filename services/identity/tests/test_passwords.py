"""Argon2id hashing: correct, parameterised, rehash-aware; and the shipped refusal list."""

from __future__ import annotations

from confide_identity.passwords import PasswordHasher, common_passwords

OWASP = {"memory_kib": 19 * 1024, "iterations": 2, "lanes": 1}


async def test_a_hash_verifies_its_password_and_nothing_else() -> None:
    hasher = PasswordHasher(**OWASP)
    encoded = await hasher.hash("violet-harbour-lantern-92")
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await hasher.verify("violet-harbour-lantern-92", encoded)
    assert not await hasher.verify("violet-harbour-lantern-93", encoded)


async def test_the_same_password_hashes_differently_each_time() -> None:
    hasher = PasswordHasher(**OWASP)
    assert await hasher.hash("violet-harbour-lantern-92") != await hasher.hash(
        "violet-harbour-lantern-92"
    )


async def test_hashes_made_with_weaker_parameters_need_a_rehash() -> None:
    old = await PasswordHasher(**OWASP).hash("violet-harbour-lantern-92")
    stronger = PasswordHasher(memory_kib=19 * 1024, iterations=3, lanes=1)
    assert stronger.needs_rehash(old)
    assert not stronger.needs_rehash(await stronger.hash("violet-harbour-lantern-92"))


async def test_a_malformed_hash_never_verifies() -> None:
    assert not await PasswordHasher(**OWASP).verify("anything", "$argon2id$garbage")


def test_the_shipped_list_holds_thousands_of_common_passwords() -> None:
    passwords = common_passwords()
    assert len(passwords) > 3000
    assert {"password", "qwertyuiop", "iloveyou", "1q2w3e4r5t6y"} <= passwords
