"""Fixtures of the pipeline's tests: the toolkit's tables with the consumers' effect table, an
idempotent producer, and the spans the process finishes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.telemetry import configure_telemetry
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncEngine

# The "effect" of the consumer in these tests: a counter per subject.
effects_metadata = MetaData()
effects = Table(
    "effects",
    effects_metadata,
    Column("subject_id", PG_UUID(as_uuid=True), primary_key=True),
    Column("applied", Integer, nullable=False),
)


@pytest.fixture
async def engine(toolkit_engine: AsyncEngine) -> AsyncEngine:
    async with toolkit_engine.begin() as conn:
        await conn.run_sync(effects_metadata.create_all)
    return toolkit_engine


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = idempotent_producer(kafka_bootstrap)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(scope="session")
def finished_spans() -> InMemorySpanExporter:
    """Every span the tests' process finishes, recorded in memory."""
    provider = configure_telemetry("confide-test", "none")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
