"""Topic administration: the suite creates its own topics instead of relying on broker
auto-creation, so that every event topic keeps its history forever and has a dead-letter twin."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from confide_events.topics import ALL_EVENT_TOPICS, dead_letter_topic

logger = logging.getLogger(__name__)

# Event topics are the system of record for replay and audit: never delete a record.
EVENT_TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


def suite_topics() -> list[str]:
    """Every topic the suite needs: each producer's event topic and its dead-letter twin."""
    topics: list[str] = []
    for topic in ALL_EVENT_TOPICS:
        topics += [topic, dead_letter_topic(topic)]
    return topics


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 3) -> list[str]:
    """Create the topics that do not exist yet (infinite retention); return those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name=t,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs=EVENT_TOPIC_CONFIG,
            )
            for t in missing
        ]
        # Another replica may create them between our listing and our request.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        for topic in missing:
            logger.info("topic created", extra={"topic": topic, "partitions": partitions})
        return missing
    finally:
        await admin.close()
