"""Benchmarks of the platform (issue #11): the event pipeline, the HTTP path, shredding and
decryption on read, each measured beside its raw baseline in the same run, on the same broker
and database, so that the ratios hold on a noisy machine.

Run from the repository root, with the native stack up (`make up` or `deploy/stack.sh infra-up`):

    uv run python -m bench                      # every scenario, writes docs/benchmarks.md
    uv run python -m bench --quick              # a one-minute smoke run
    uv run python -m bench --only shred,decrypt

Benchmarks print figures; tests never assert times."""
