"""Scenario 3, shredding: erasing a person's `identity.profile` with 1, 100 and 10,000 encrypted
records under that key, against deleting the same rows with SQL.

The records are written with the toolkit directly (`Keyring.encrypt`, one per record, as a service
writes them), into a profile-records table shaped like a service's, among other people's rows.
Each timing is one transaction, from BEGIN to COMMIT returned: `Keyring.shred` for the person's
key, then `DELETE ... WHERE subject_id = ...` of the very same rows (indexed on subject_id)."""

from __future__ import annotations

import random
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from confide_toolkit.keyring import Keyring
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.figures import Figure, ScenarioResult
from bench.stack import Stack, scratch_database

CATEGORY = "identity.profile"


@dataclass(frozen=True)
class ShreddingConfig:
    sizes: tuple[int, ...] = (1, 100, 10_000)
    repetitions: int = 5
    """People per size; the figure is the median over them."""
    background_records: int = 50_000
    background_keys: int = 5_000

    @classmethod
    def quick(cls) -> ShreddingConfig:
        return cls(sizes=(1, 100, 1_000), repetitions=3, background_records=5_000)


def _profile_plaintext(i: int) -> bytes:
    # About the size of one profile field set: email, name, phone, address.
    return (
        f'{{"email":"person{i}@example.org","name":"Alex Example {i}",'
        f'"phone":"+44 20 7946 {i % 10000:04d}","address":"{i} Example Street, London"}}'
    ).encode()


async def run_shredding(stack: Stack, config: ShreddingConfig) -> ScenarioResult:
    from confide_toolkit.clock import SystemClock
    from confide_toolkit.database import create_engine, toolkit_metadata
    from confide_toolkit.kek import LocalKeyFile
    from confide_toolkit.keyring import ERASED
    from sqlalchemy import text

    shred_ms: dict[int, list[float]] = {n: [] for n in config.sizes}
    delete_ms: dict[int, list[float]] = {n: [] for n in config.sizes}
    with scratch_database(stack, "shred") as url, TemporaryDirectory() as keys:
        engine = create_engine(url, pool_size=4)
        keyring = Keyring("identity", LocalKeyFile(Path(keys) / "kek.json"), SystemClock())
        try:
            async with engine.begin() as conn:
                await conn.run_sync(toolkit_metadata.create_all)
                await conn.execute(
                    text(
                        "CREATE TABLE profile_records (record_id uuid PRIMARY KEY,"
                        " subject_id uuid NOT NULL, body bytea NOT NULL)"
                    )
                )
                await conn.execute(
                    text("CREATE INDEX ix_profile_records_subject ON profile_records (subject_id)")
                )
                # Other people's data around the measured person: rows and keys.
                await conn.execute(
                    text(
                        "INSERT INTO profile_records"
                        " SELECT gen_random_uuid(), ('00000000-0000-4000-8000-' ||"
                        " lpad(to_hex(g % 2000), 12, '0'))::uuid,"
                        " decode(repeat(md5(g::text), 5), 'hex') FROM generate_series(1, :n) g"
                    ),
                    {"n": config.background_records},
                )
                await conn.execute(
                    text(
                        "INSERT INTO data_keys SELECT gen_random_uuid(), gen_random_uuid(),"
                        " :category, 1, decode(repeat(md5(g::text), 4), 'hex'), now()"
                        " FROM generate_series(1, :n) g"
                    ),
                    {"category": CATEGORY, "n": config.background_keys},
                )
            people: list[tuple[int, uuid.UUID]] = []
            for size in config.sizes:
                for _ in range(config.repetitions):
                    subject = uuid.uuid4()
                    await _write_profile(engine, keyring, subject, size)
                    people.append((size, subject))
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE"))

            # Interleave the sizes so that drift in the machine's load spreads over all of them.
            # Round by round, one person of each size in a shuffled order, so that drift in the
            # machine's load and whatever the previous DELETE left to flush fall on every size.
            shuffle = random.Random(11)
            rounds: list[tuple[int, uuid.UUID]] = []
            for round_number in range(config.repetitions):
                batch = people[round_number :: config.repetitions]
                shuffle.shuffle(batch)
                rounds += batch
            for size, subject in rounds:
                began = time.perf_counter()
                async with engine.begin() as conn:
                    tombstone = await keyring.shred(conn, subject, CATEGORY)
                shred_ms[size].append((time.perf_counter() - began) * 1000)
                assert tombstone is not None
                async with engine.connect() as conn:
                    row = (
                        await conn.execute(
                            text(
                                "SELECT record_id, body FROM profile_records"
                                " WHERE subject_id = :s LIMIT 1"
                            ),
                            {"s": subject},
                        )
                    ).first()
                    assert row is not None
                    erased = await keyring.decrypt(
                        conn, subject, CATEGORY, str(row.record_id), bytes(row.body)
                    )
                    assert erased is ERASED, "a shredded record still decrypts"
                began = time.perf_counter()
                async with engine.begin() as conn:
                    deleted = await conn.execute(
                        text("DELETE FROM profile_records WHERE subject_id = :s"), {"s": subject}
                    )
                delete_ms[size].append((time.perf_counter() - began) * 1000)
                assert deleted.rowcount == size
        finally:
            await engine.dispose()
    return _shredding_result(config, shred_ms, delete_ms)


async def _write_profile(
    engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID, size: int
) -> None:
    from sqlalchemy import text

    rows = []
    async with engine.begin() as conn:
        for i in range(size):
            record_id = uuid.uuid4()
            body = await keyring.encrypt(
                conn, subject, CATEGORY, str(record_id), _profile_plaintext(i)
            )
            rows.append({"r": record_id, "s": subject, "b": body})
        await conn.execute(text("INSERT INTO profile_records VALUES (:r, :s, :b)"), rows)


def _shredding_result(
    config: ShreddingConfig, shred_ms: dict[int, list[float]], delete_ms: dict[int, list[float]]
) -> ScenarioResult:
    shred = {n: statistics.median(v) for n, v in shred_ms.items()}
    delete = {n: statistics.median(v) for n, v in delete_ms.items()}
    smallest, largest = min(config.sizes), max(config.sizes)
    figures = [
        Figure(
            "3 shredding",
            f"shred identity.profile, {n:,} record{'s' if n != 1 else ''} (median)",
            shred[n],
            "ms",
            delete[n],
            "SQL DELETE",
        )
        for n in config.sizes
    ]
    growth = shred[largest] / shred[smallest]
    figures.append(
        Figure(
            "3 shredding",
            f"growth {smallest:,} → {largest:,} records",
            growth,
            "x",
            delete[largest] / delete[smallest],
            "SQL DELETE",
            "shred ≤ 2x (flat)",
            growth <= 2.0,
        )
    )
    return ScenarioResult(
        name="shred",
        figures=figures,
        series={
            "sizes": list(config.sizes),
            "shred_ms": {str(k): v for k, v in shred_ms.items()},
            "delete_ms": {str(k): v for k, v in delete_ms.items()},
        },
        setup=[
            f"{config.repetitions} people per size, each with 1 `identity.profile` key and "
            f"that many records written with `Keyring.encrypt` (about 200 bytes of profile each);"
            f" around them {config.background_records:,} other rows and "
            f"{config.background_keys:,} other data keys.",
            "Each timing is one transaction, BEGIN to COMMIT returned (median over the people): "
            "`Keyring.shred` (advisory lock, key row deleted and tombstone recorded in one "
            "statement), then `DELETE FROM profile_records WHERE subject_id = …` of the same rows "
            "(B-tree index on subject_id). A read after the shred checks the record is ERASED.",
        ],
    )
