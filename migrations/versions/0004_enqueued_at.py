"""the reconciler's bookkeeping: when work was last enqueued, attempts lost with their worker

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "job_shards"):
        op.add_column(
            table,
            sa.Column("enqueued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        )
    op.add_column("jobs", sa.Column("lost_attempts", sa.Integer(), server_default="0", nullable=False))
    # The reconciler's scans: queued work by age, running work by heartbeat.
    op.create_index("jobs_status_enqueued_at", "jobs", ["status", "enqueued_at"])
    op.create_index("job_shards_status_heartbeat_at", "job_shards", ["status", "heartbeat_at"])


def downgrade() -> None:
    op.drop_index("job_shards_status_heartbeat_at", table_name="job_shards")
    op.drop_index("jobs_status_enqueued_at", table_name="jobs")
    op.drop_column("jobs", "lost_attempts")
    for table in ("jobs", "job_shards"):
        op.drop_column(table, "enqueued_at")
