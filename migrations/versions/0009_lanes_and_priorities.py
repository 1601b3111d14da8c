"""interactive work apart from bulk work, and a priority per job: jobs.lane, jobs.priority

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("lane", sa.String(length=16), server_default="bulk", nullable=False))
    op.add_column("jobs", sa.Column("priority", sa.String(length=16), server_default="normal", nullable=False))
    op.create_check_constraint("jobs_lane_valid", "jobs", "lane IN ('interactive', 'bulk')")
    op.create_check_constraint("jobs_priority_valid", "jobs", "priority IN ('low', 'normal', 'high')")
    # Busy workers look for waiting interactive jobs between batches: this keeps the look cheap.
    op.create_index(
        "jobs_interactive_queued",
        "jobs",
        ["created_at"],
        postgresql_where=sa.text("lane = 'interactive' AND status = 'queued'"),
    )
    # The fair-share claim reads queued shards, and counts running ones, per job.
    op.create_index("job_shards_status_job_id", "job_shards", ["status", "job_id"])


def downgrade() -> None:
    op.drop_index("job_shards_status_job_id", table_name="job_shards")
    op.drop_index("jobs_interactive_queued", table_name="jobs")
    op.drop_constraint("jobs_priority_valid", "jobs", type_="check")
    op.drop_constraint("jobs_lane_valid", "jobs", type_="check")
    op.drop_column("jobs", "priority")
    op.drop_column("jobs", "lane")
