"""The messaging service's tables, repositories and projections.

- The conversation streams live in the toolkit's event store (`stored_events`), one per
  conversation; their events hold ciphertext, never plaintext.
- `conversations`, `messages` and `session_notes` are the projection of those streams, written
  in the transaction of each append and rebuildable from the streams. Bodies are kept exactly as
  the keyring sealed them: each under its client's key for its category, bound to its id. A
  client's category can have had several keys (a fresh one after an erasure, while a
  conversation is open), so every read joins each body's own key: the erased ones find none.
- `people` is the read model of `identity.events`: who is a client, a therapist or compliance,
  and who closed their account.
- `idempotent_posts` remembers each `Idempotency-Key` a sender used and the message it made.
- `disclosures` holds each disclosure, its bundle sealed under a one-time key that only the
  download token carries (the service keeps its SHA-256), until the bundle is downloaded.
- `consent_view` (the toolkit's) is what disclosures check.
"""

from confide_messaging.store.directory import Person, find_person, record_closed, record_registered
from confide_messaging.store.disclosure_bundles import DisclosureRecord, add_disclosure, take_bundle
from confide_messaging.store.posts import EarlierPost, find_earlier_post, remember_post
from confide_messaging.store.reads import (
    find_conversation,
    latest_conversation_between,
    list_conversations,
    list_messages,
    list_notes,
    messages_of_client,
    open_conversations_of,
)
from confide_messaging.store.streams import (
    CONVERSATION_SNAPSHOT_SCHEMA,
    SNAPSHOT_EVERY,
    Conversations,
    project_conversation,
)
from confide_messaging.store.tables import (
    conversations,
    disclosures,
    idempotent_posts,
    messages,
    metadata,
    people,
    session_notes,
)

__all__ = [
    "CONVERSATION_SNAPSHOT_SCHEMA",
    "SNAPSHOT_EVERY",
    "Conversations",
    "DisclosureRecord",
    "EarlierPost",
    "Person",
    "add_disclosure",
    "conversations",
    "disclosures",
    "find_conversation",
    "find_earlier_post",
    "find_person",
    "idempotent_posts",
    "latest_conversation_between",
    "list_conversations",
    "list_messages",
    "list_notes",
    "messages",
    "messages_of_client",
    "metadata",
    "open_conversations_of",
    "people",
    "project_conversation",
    "record_closed",
    "record_registered",
    "remember_post",
    "session_notes",
    "take_bundle",
]
