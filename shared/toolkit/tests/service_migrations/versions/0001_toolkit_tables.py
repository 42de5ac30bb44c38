"""The toolkit's tables, for the toolkit's own service tests.

Revision ID: 0001
Revises:
"""

from alembic import op
from confide_toolkit.database import toolkit_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    toolkit_metadata.create_all(op.get_bind())


def downgrade() -> None:
    toolkit_metadata.drop_all(op.get_bind())
