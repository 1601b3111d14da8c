"""indexes on when jobs and shards started: a waiting job's estimate reads the recent starts of its queue
(service/ops.recent_waits) at every submission and every look at it

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("jobs_started_at", "jobs", ["started_at"])
    op.create_index("job_shards_started_at", "job_shards", ["started_at"])


def downgrade() -> None:
    op.drop_index("job_shards_started_at", table_name="job_shards")
    op.drop_index("jobs_started_at", table_name="jobs")
