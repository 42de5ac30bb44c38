"""Key-encryption keys: the provider chosen by configuration, and the local key file (versioned
keys, rotated and retired on disk)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from confide_toolkit.kek import (
    CannotRetireCurrentKek,
    CorruptWrappedKey,
    KeyEncryptionKeys,
    KeyFileInvalid,
    LocalKeyFile,
    RetiredKekVersion,
    UnknownKekProvider,
    keks_from_settings,
    register_kek_provider,
    unregister_kek_provider,
)
from confide_toolkit.service import Service
from confide_toolkit.settings import ServiceSettings

DATA_KEY = bytes(range(32))


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "kek.json"


class InMemoryKeks:
    """A provider that exists only in this test: one version, held in memory."""

    VERSION = 7

    def __init__(self) -> None:
        self._kek = os.urandom(32)

    @property
    def current_version(self) -> int:
        return self.VERSION

    def wrap(self, data_key: bytes) -> tuple[int, bytes]:
        return self.VERSION, bytes(a ^ b for a, b in zip(data_key, self._kek, strict=True))

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        if version != self.VERSION:
            raise RetiredKekVersion(version)
        return bytes(a ^ b for a, b in zip(wrapped, self._kek, strict=True))


def _settings(key_path: Path, **overrides: object) -> ServiceSettings:
    # The database is never reached: building a Service connects to nothing (its Kafka clients
    # want a running event loop, hence the async tests).
    return ServiceSettings(
        service_name="probe",
        database_url="postgresql+psycopg://probe@127.0.0.1:1/none",
        kek_file=key_path,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def in_memory_provider() -> Iterator[InMemoryKeks]:
    keks = InMemoryKeks()
    register_kek_provider("in-memory", lambda settings: keks)
    yield keks
    unregister_kek_provider("in-memory")


async def test_the_local_key_file_is_the_default_provider(
    key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONFIDE_KEK_PROVIDER", raising=False)
    service = Service(_settings(key_path), migrations=key_path.parent)

    keks = service.keyring.keks
    assert isinstance(keks, LocalKeyFile)
    assert keks.path == key_path


def test_an_unknown_provider_refuses_to_start_naming_the_setting_and_the_known_ones(
    key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFIDE_KEK_PROVIDER", "vault")

    with pytest.raises(UnknownKekProvider) as raised:
        Service(_settings(key_path), migrations=key_path.parent)

    assert str(raised.value) == (
        "CONFIDE_KEK_PROVIDER='vault' names no key-encryption-key provider; "
        "known providers: local-file"
    )
    assert not key_path.exists()  # no key file made up on the way


async def test_a_provider_registered_by_name_is_the_one_the_service_uses(
    key_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory_provider: InMemoryKeks
) -> None:
    monkeypatch.setenv("CONFIDE_KEK_PROVIDER", "in-memory")

    service = Service(_settings(key_path), migrations=key_path.parent)

    assert service.keyring.keks is in_memory_provider
    with pytest.raises(UnknownKekProvider, match="known providers: in-memory, local-file"):
        keks_from_settings(_settings(key_path, kek_provider="kms"))


def test_a_provider_name_already_taken_is_refused(in_memory_provider: InMemoryKeks) -> None:
    with pytest.raises(ValueError, match="already registered as 'local-file'"):
        register_kek_provider("local-file", lambda settings: InMemoryKeks())


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_local_key_file_is_created_with_mode_0600_on_first_use(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    assert not key_path.exists()  # nothing happens until the keys are needed

    assert keks.current_version == 1

    assert _mode(key_path) == 0o600
    assert _mode(key_path.parent) & 0o077 == 0
    document = json.loads(key_path.read_text())
    assert document["current"] == 1
    assert set(document["versions"]) == {"1"}


def test_local_key_file_satisfies_the_provider_interface(key_path: Path) -> None:
    keks: KeyEncryptionKeys = LocalKeyFile(key_path)
    version, wrapped = keks.wrap(DATA_KEY)
    assert version == keks.current_version
    assert keks.unwrap(version, wrapped) == DATA_KEY


def test_wrapped_key_hides_the_data_key_and_differs_each_time(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    _, first = keks.wrap(DATA_KEY)
    _, second = keks.wrap(DATA_KEY)
    assert DATA_KEY not in first
    assert first != second  # a fresh nonce per wrap


def test_keys_survive_a_new_instance_on_the_same_file(key_path: Path) -> None:
    version, wrapped = LocalKeyFile(key_path).wrap(DATA_KEY)
    assert LocalKeyFile(key_path).unwrap(version, wrapped) == DATA_KEY


def test_rotate_makes_a_new_version_current_and_keeps_old_ones(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    old_version, old_wrapped = keks.wrap(DATA_KEY)

    new_version = keks.rotate()

    assert new_version == old_version + 1
    assert keks.current_version == new_version
    assert keks.wrap(DATA_KEY)[0] == new_version
    assert keks.unwrap(old_version, old_wrapped) == DATA_KEY
    assert _mode(key_path) == 0o600
    assert not [p for p in key_path.parent.iterdir() if p.name.startswith(".kek.json.")]


def test_retired_version_can_no_longer_unwrap(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    version, wrapped = keks.wrap(DATA_KEY)
    keks.rotate()

    keks.retire(version)

    with pytest.raises(RetiredKekVersion) as raised:
        keks.unwrap(version, wrapped)
    assert raised.value.version == version
    assert str(version) not in json.loads(key_path.read_text())["versions"]
    keks.retire(version)  # retiring again changes nothing


def test_retiring_the_current_version_is_refused(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    with pytest.raises(CannotRetireCurrentKek):
        keks.retire(keks.current_version)
    assert keks.versions == [1]


def test_retired_version_numbers_are_never_reused(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    keks.rotate()
    keks.retire(1)
    assert keks.rotate() == 3


def test_rotation_by_another_process_is_seen_at_once(key_path: Path) -> None:
    replica, operator = LocalKeyFile(key_path), LocalKeyFile(key_path)
    old_version, old_wrapped = replica.wrap(DATA_KEY)

    new_version = operator.rotate()
    assert replica.current_version == new_version
    version, wrapped = operator.wrap(DATA_KEY)
    assert replica.unwrap(version, wrapped) == DATA_KEY

    operator.retire(old_version)
    with pytest.raises(RetiredKekVersion):
        replica.unwrap(old_version, old_wrapped)


def test_wrapped_key_is_bound_to_its_version(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    version, wrapped = keks.wrap(DATA_KEY)
    keks.rotate()
    with pytest.raises(CorruptWrappedKey):
        keks.unwrap(version + 1, wrapped)


def test_altered_wrapped_key_is_rejected(key_path: Path) -> None:
    keks = LocalKeyFile(key_path)
    version, wrapped = keks.wrap(DATA_KEY)
    altered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(CorruptWrappedKey):
        keks.unwrap(version, altered)
    with pytest.raises(CorruptWrappedKey):
        keks.unwrap(version, wrapped[:10])


def test_malformed_key_file_is_reported_without_its_contents(key_path: Path) -> None:
    key_path.parent.mkdir(parents=True)
    key_path.write_text(json.dumps({"current": 2, "versions": {"1": "AAAA"}}))
    with pytest.raises(KeyFileInvalid) as raised:
        LocalKeyFile(key_path).current_version  # noqa: B018
    assert "AAAA" not in str(raised.value)
