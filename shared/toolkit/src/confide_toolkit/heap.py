"""A service's long-lived objects, kept out of the garbage collector's full passes.

By the end of its start a service holds hundreds of thousands of objects that live as long as
it does: its libraries, its app and routes, its schemas and event models. CPython's full
collection walks every one of them, each time; in the pipeline benchmark that was a pause of
60-120 ms several times a minute under load, in whichever process it struck (the relay's or a
consumer's), and it made the tail of every commit-to-consumed latency. Moved to the
collector's permanent generation once started (`gc.freeze`), they are no longer walked, and a
full pass sees only what was made since. They are still freed by reference counting; what
was cyclic garbage at that moment stays until the service stops (`thaw`)."""

from __future__ import annotations

import gc


def freeze_what_start_built() -> None:
    """After start: the objects alive now are left out of every later collection."""
    gc.freeze()


def thaw() -> None:
    """At stop: hand them back to the collector, so that a process that starts services one
    after another (the tests) frees what each left behind."""
    gc.unfreeze()
