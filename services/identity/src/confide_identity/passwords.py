"""Password hashing with Argon2id, off the event loop, and the list of refused passwords.

Hashes are PHC strings (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), so each carries the
parameters it was made with: raising the parameters makes `needs_rehash` true for older hashes,
and the next successful sign-in stores a stronger one."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
import re
from importlib import resources

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from confide_identity.domain import PolicyViolation, password_violations

_SALT_BYTES = 16
_HASH_BYTES = 32
_PARAMETERS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def give_hash_memory_back_to_the_system() -> bool:
    """Make every allocation of 1 MiB or more its own mapping, returned to the system when freed.

    Each Argon2id computation allocates its whole memory cost (19 MiB and up) in a worker
    thread. glibc raises its mapping threshold after the first such buffer is freed, so later
    ones come from per-thread heaps that keep the memory: an idle identity process then held
    ~115 MiB more than one that never hashed. A threshold set explicitly stays put. Returns
    whether it could be set (False off glibc, where nothing changes)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


@functools.cache
def common_passwords() -> frozenset[str]:
    """The common and breached passwords shipped with the service (lower-cased)."""
    text = (
        resources.files("confide_identity")
        .joinpath("data/common-passwords.txt")
        .read_text(encoding="utf-8")
    )
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def check_password(password: str, email: str | None) -> list[PolicyViolation]:
    """Why a password is refused under the policy, against the shipped list."""
    return password_violations(password, email, common_passwords())


class PasswordHasher:
    """Argon2id with the configured parameters; hashing and verifying run in worker threads,
    at most `max_concurrency` at once (each holds `memory_kib` of memory)."""

    def __init__(
        self, memory_kib: int, iterations: int, lanes: int, max_concurrency: int = 4
    ) -> None:
        self.memory_kib = memory_kib
        self.iterations = iterations
        self.lanes = lanes
        self._slots = asyncio.Semaphore(max_concurrency)
        self._dummy: str | None = None
        give_hash_memory_back_to_the_system()

    def _kdf(self, salt: bytes) -> Argon2id:
        return Argon2id(
            salt=salt,
            length=_HASH_BYTES,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )

    def _hash_now(self, password: str) -> str:
        return self._kdf(os.urandom(_SALT_BYTES)).derive_phc_encoded(password.encode("utf-8"))

    async def hash(self, password: str) -> str:
        """A new PHC-encoded Argon2id hash of `password` (fresh random salt)."""
        async with self._slots:
            return await asyncio.to_thread(self._hash_now, password)

    async def verify(self, password: str, encoded: str) -> bool:
        """Whether `password` matches the PHC-encoded hash; False for a malformed hash."""

        def check() -> bool:
            try:
                Argon2id.verify_phc_encoded(password.encode("utf-8"), encoded)
            except (InvalidKey, ValueError):
                return False
            return True

        async with self._slots:
            return await asyncio.to_thread(check)

    async def verify_nothing(self, password: str) -> None:
        """Spend the time a real verification takes, for a sign-in with no account behind it,
        so that timing does not tell an unknown email from a wrong password."""
        if self._dummy is None:
            self._dummy = await self.hash(os.urandom(16).hex())
        await self.verify(password, self._dummy)

    def needs_rehash(self, encoded: str) -> bool:
        """Whether a hash was made with weaker parameters than the current ones."""
        match = _PARAMETERS.match(encoded)
        if match is None:
            return True
        memory, iterations, lanes = (int(group) for group in match.groups())
        return memory < self.memory_kib or iterations < self.iterations or lanes < self.lanes
