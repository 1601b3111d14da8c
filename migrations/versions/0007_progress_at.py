"""liveness apart from progress: when a running job or shard last made progress

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # heartbeat_at now says the worker lives (its presence thread keeps it); progress_at that the task advances.
    for table in ("jobs", "job_shards"):
        op.add_column(table, sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
        op.execute(f"UPDATE {table} SET progress_at = heartbeat_at")


def downgrade() -> None:
    for table in ("jobs", "job_shards"):
        op.drop_column(table, "progress_at")
