"""KEK versions on their schedule: rotated every period with every data key re-wrapped, and
destroyed once the backup retention has passed, so that no older backup can unwrap a key that
was shredded since; the operator command shows which versions are live and when each dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from confide_testing import eventually, serving
from confide_toolkit.clock import FrozenClock
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.ids import uuid7
from confide_toolkit.kek import KekSchedule, LocalKeyFile, RetiredKekVersion, backups_clear_from
from confide_toolkit.keyring import Keyring, data_keys
from confide_toolkit.keys import KekLifecycle
from confide_toolkit.service import Service
from confide_toolkit.settings import ServiceSettings
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .test_positions import MIGRATIONS

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SCHEDULE = KekSchedule(rotation_period=timedelta(days=30), backup_retention=timedelta(days=35))
CATEGORY = "messaging.messages"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def key_file(tmp_path: Path, clock: FrozenClock) -> LocalKeyFile:
    return LocalKeyFile(tmp_path / "kek.json", clock)


@pytest.fixture
def keyring(key_file: LocalKeyFile, clock: FrozenClock) -> Keyring:
    return Keyring("messaging", key_file, clock)


@pytest.fixture
def lifecycle(
    key_file: LocalKeyFile, keyring: Keyring, toolkit_engine: AsyncEngine, clock: FrozenClock
) -> KekLifecycle:
    return KekLifecycle(key_file, keyring, toolkit_engine, SCHEDULE, clock)


async def _write(engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID) -> bytes:
    async with engine.begin() as conn:
        return await keyring.encrypt(conn, subject, CATEGORY, "m-1", b"what was said")


async def _backup_of_key(engine: AsyncEngine, subject: uuid.UUID) -> tuple[int, bytes]:
    """What a backup of the database holds of the person's key: its version and wrapped bytes."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(data_keys.c.kek_version, data_keys.c.wrapped_key).where(
                    data_keys.c.subject_id == subject
                )
            )
        ).one()
    return row.kek_version, bytes(row.wrapped_key)


async def test_a_backup_from_before_an_erasure_unwraps_nothing_once_its_version_is_destroyed(
    lifecycle: KekLifecycle,
    key_file: LocalKeyFile,
    keyring: Keyring,
    toolkit_engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    erased, kept = uuid7(), uuid7()
    await _write(toolkit_engine, keyring, erased)
    kept_ciphertext = await _write(toolkit_engine, keyring, kept)
    backup = await _backup_of_key(toolkit_engine, erased)  # the nightly backup, version 1
    assert backup[0] == 1

    clock.advance(timedelta(days=1))
    async with toolkit_engine.begin() as conn:
        await keyring.shred(conn, erased, CATEGORY)
    erased_at = clock.now()
    # What the certificate states: version 1 is replaced at START + 30 days, destroyed 35 later.
    clear_from = lifecycle.backups_clear_from(erased_at)
    assert clear_from == START + timedelta(days=65)
    assert clear_from <= backups_clear_from(erased_at, SCHEDULE)  # retention's bound holds

    # Within the backup retention a backup can still be restored: its key unwraps.
    clock.advance(timedelta(days=28))
    assert (await lifecycle.maintain()).rotated_to is None
    assert key_file.unwrap(*backup)

    clock.advance(timedelta(days=1))  # START + 30 days: rotation due
    report = await lifecycle.maintain()
    assert report.rotated_to == 2
    assert report.rewrapped == 1  # the person's key that was kept, now under version 2
    assert report.retired == []
    assert (await _backup_of_key(toolkit_engine, kept))[0] == 2
    assert key_file.unwrap(*backup)  # a 29-day-old backup still restores

    clock.advance(clear_from - clock.now() - timedelta(seconds=1))
    assert (await lifecycle.maintain()).retired == []
    assert key_file.unwrap(*backup)

    clock.advance(timedelta(seconds=1))
    assert (await lifecycle.maintain()).retired == [1]
    with pytest.raises(RetiredKekVersion):
        key_file.unwrap(*backup)
    # The live data, re-wrapped on every rotation, reads on.
    async with toolkit_engine.connect() as conn:
        assert await keyring.decrypt(conn, kept, CATEGORY, "m-1", kept_ciphertext) == (
            b"what was said"
        )
    # Version 2 served its period too (START + 60 days) and was replaced on the way.
    assert [v.version for v in await lifecycle.status()] == [2, 3]


async def test_status_says_which_versions_are_live_and_when_each_dies(
    lifecycle: KekLifecycle,
    key_file: LocalKeyFile,
    keyring: Keyring,
    toolkit_engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    await _write(toolkit_engine, keyring, uuid7())
    clock.advance(timedelta(days=31))
    await lifecycle.maintain()
    clock.advance(timedelta(days=2))
    versions = await lifecycle.status()
    assert [(v.version, v.state(clock.now())) for v in versions] == [
        (1, "superseded"),
        (2, "current"),
    ]
    old, current = versions
    assert old.superseded_at == START + timedelta(days=31)
    assert old.dies_at == START + timedelta(days=31 + 35)
    assert old.wraps == {}
    assert current.wraps == {"data_keys": 1}
    # The current version dies one backup retention after its scheduled replacement.
    assert current.dies_at == START + timedelta(days=31 + 30 + 35)


async def test_a_version_still_wrapping_rows_past_its_death_is_kept_and_reported(
    lifecycle: KekLifecycle,
    key_file: LocalKeyFile,
    toolkit_engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    # A service table of its own wrapped under version 1 (as identity's signing keys are),
    # which the keyring's re-wrap does not move.
    async with toolkit_engine.begin() as conn:
        await conn.execute(text("CREATE TABLE held_secrets (kek_version integer NOT NULL)"))
        await conn.execute(
            text("INSERT INTO held_secrets VALUES (:v)"), {"v": key_file.current_version}
        )
    clock.advance(timedelta(days=30))
    await lifecycle.maintain()
    clock.advance(timedelta(days=36))
    retired, blocked = await lifecycle.retire_expired()
    assert retired == []
    assert blocked == {1: {"held_secrets": 1}}
    assert 1 in [v.version for v in key_file.lifecycle()]
    assert (await lifecycle.status())[0].state(clock.now()) == "blocked"


def test_replicas_that_find_a_rotation_due_make_one_new_version(
    tmp_path: Path, clock: FrozenClock
) -> None:
    one = LocalKeyFile(tmp_path / "kek.json", clock)
    other = LocalKeyFile(tmp_path / "kek.json", clock)
    assert one.current_version == 1
    clock.advance(timedelta(days=30))
    cutoff = clock.now() - SCHEDULE.rotation_period
    assert one.rotate(if_made_by=cutoff + timedelta(seconds=1)) == 2
    assert other.rotate(if_made_by=cutoff + timedelta(seconds=1)) == 2
    assert other.versions == [1, 2]


def test_a_key_file_from_before_the_schedule_is_rotated_at_once_and_never_retired_early(
    tmp_path: Path, clock: FrozenClock
) -> None:
    path = tmp_path / "kek.json"
    path.write_text(json.dumps({"current": 1, "versions": {"1": "A" * 43 + "="}}))
    key_file = LocalKeyFile(path, clock)
    [undated] = key_file.lifecycle()
    assert undated.created_at is None
    assert SCHEDULE.rotation_due(undated, clock.now())
    assert key_file.rotate(if_made_by=clock.now()) == 2
    old, _ = key_file.lifecycle()
    # Replaced now, so it dies a full backup retention from now.
    assert SCHEDULE.dies_at(old, clock.now()) == clock.now() + SCHEDULE.backup_retention


def test_the_schedule_and_its_retention_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIDE_KEK_ROTATION_PERIOD", "P7D")
    monkeypatch.setenv("CONFIDE_KEK_BACKUP_RETENTION", "PT90S")
    monkeypatch.setenv("CONFIDE_KEK_MAINTENANCE_INTERVAL", "PT1H")
    schedule = KekSchedule()
    assert schedule.rotation_period == timedelta(days=7)
    assert schedule.backup_retention == timedelta(seconds=90)
    # Replaced within a week of the erasure, destroyed 90 s later, each up to an hour late.
    assert backups_clear_from(START, schedule) == START + timedelta(days=7, hours=2, seconds=90)
    monkeypatch.setenv("CONFIDE_KEK_ROTATION_PERIOD", "P0D")
    with pytest.raises(ValueError, match="rotation_period"):
        KekSchedule()


def test_the_operator_command_shows_the_versions_and_rotates(
    database_url: str, tmp_path: Path
) -> None:
    engine = sqlalchemy.create_engine(database_url)
    with engine.begin() as conn:
        toolkit_metadata.create_all(conn)
    engine.dispose()
    env = {
        **os.environ,
        "CONFIDE_SERVICE_NAME": "probe",
        "CONFIDE_DATABASE_URL": database_url,
        "CONFIDE_KEK_FILE": str(tmp_path / "kek.json"),
    }

    def keys(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - this interpreter, arguments of the test
            [sys.executable, "-m", "confide_toolkit.keys", *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    status = keys("status")
    assert status.returncode == 0, status.stderr
    assert "KEK versions of probe" in status.stdout
    assert "current" in status.stdout and "due " in status.stdout

    rotated = keys("rotate", "--json")
    assert rotated.returncode == 0, rotated.stderr
    document = json.loads(rotated.stdout)
    assert document["rotated_to"] == 2
    assert [(v["version"], v["state"]) for v in document["versions"]] == [
        (1, "superseded"),
        (2, "current"),
    ]
    assert document["versions"][0]["dies_at"] is not None

    unknown = keys("destroy-everything")
    assert unknown.returncode != 0
    assert "invalid choice" in unknown.stderr


async def test_a_services_own_wrapped_secrets_are_re_wrapped_with_the_data_keys(
    lifecycle: KekLifecycle,
    key_file: LocalKeyFile,
    toolkit_engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    # As identity keeps its signing keys and secrets: wrapped by the KEK, outside the keyring.
    secret = os.urandom(32)
    version, wrapped = key_file.wrap(secret)
    async with toolkit_engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE own_secrets (kek_version integer NOT NULL, wrapped_secret bytea)")
        )
        await conn.execute(
            text("INSERT INTO own_secrets VALUES (:v, :w)"), {"v": version, "w": wrapped}
        )
    clock.advance(timedelta(days=30))
    await lifecycle.maintain()
    async with toolkit_engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT kek_version, wrapped_secret FROM own_secrets"))
        ).one()
    assert row.kek_version == 2
    clock.advance(timedelta(days=35))
    assert (await lifecycle.maintain()).retired == [1]
    assert key_file.unwrap(row.kek_version, bytes(row.wrapped_secret)) == secret


async def test_a_running_service_rotates_and_rewraps_on_its_schedule_by_itself(
    database_url: str, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key file whose only version was made two days ago, on a one-day schedule.
    made_long_ago = FrozenClock(datetime.now(UTC) - timedelta(days=2))
    LocalKeyFile(tmp_path / "kek.json", made_long_ago).current_version  # noqa: B018
    monkeypatch.setenv("CONFIDE_KEK_ROTATION_PERIOD", "P1D")
    monkeypatch.setenv("CONFIDE_KEK_MAINTENANCE_INTERVAL", "PT1S")
    service = Service(
        ServiceSettings(
            service_name="probe",
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=tmp_path / "kek.json",
            graceful_shutdown_seconds=5,
        ),
        MIGRATIONS,
    )
    async with serving(service.create_app(title="p", description="p", routers=[], deps=None)):
        async with service.engine.begin() as conn:
            await service.keyring.encrypt(conn, uuid7(), CATEGORY, "m-1", b"what was said")

        async def rotated_and_rewrapped() -> bool:
            versions = LocalKeyFile(tmp_path / "kek.json").lifecycle()
            async with service.engine.connect() as conn:
                wrapped = set((await conn.execute(select(data_keys.c.kek_version))).scalars())
            return len(versions) == 2 and versions[-1].current and wrapped == {2}

        await eventually(rotated_and_rewrapped, timeout=30)
