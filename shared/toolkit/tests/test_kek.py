"""The local key file: versioned key-encryption keys, rotated and retired on disk."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from confide_toolkit.kek import (
    CannotRetireCurrentKek,
    CorruptWrappedKey,
    KeyEncryptionKeys,
    KeyFileInvalid,
    LocalKeyFile,
    RetiredKekVersion,
)

DATA_KEY = bytes(range(32))


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "kek.json"


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
