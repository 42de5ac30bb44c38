# The test plugin's fixtures (real Kafka and PostgreSQL) for every test in the workspace.
import pytest

pytest_plugins = ["confide_testing"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that stops the stack's broker or database runs after every other, so that no
    # later test meets a dependency just back (and connections it broke).
    items.sort(key=lambda item: item.get_closest_marker("outage") is not None)
