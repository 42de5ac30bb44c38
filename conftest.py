# The test plugin's fixtures (real Kafka and PostgreSQL) for every test in the workspace.
pytest_plugins = ["confide_testing"]
