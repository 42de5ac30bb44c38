from confide_toolkit.database import toolkit_metadata
from confide_toolkit.migrations import run_migrations

run_migrations([toolkit_metadata])
