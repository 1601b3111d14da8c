"""job chains: a training's next steps (jobs.next_steps: evaluate, then promote behind a gate), the job
each step came from (jobs.parent_id), and jobs of type 'promote'

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.add_column("jobs", sa.Column("next_steps", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    # A step outlives the job it came from: deleting a training keeps its evaluation's record.
    op.create_foreign_key("jobs_parent_id_fkey", "jobs", "jobs", ["parent_id"], ["id"], ondelete="SET NULL")
    op.create_index("jobs_parent_id", "jobs", ["parent_id"])
    op.drop_constraint("jobs_type_valid", "jobs", type_="check")
    op.create_check_constraint("jobs_type_valid", "jobs", "type IN ('train', 'predict', 'evaluate', 'promote')")


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE type = 'promote'")
    op.drop_constraint("jobs_type_valid", "jobs", type_="check")
    op.create_check_constraint("jobs_type_valid", "jobs", "type IN ('train', 'predict', 'evaluate')")
    op.drop_index("jobs_parent_id", table_name="jobs")
    op.drop_constraint("jobs_parent_id_fkey", "jobs", type_="foreignkey")
    op.drop_column("jobs", "next_steps")
    op.drop_column("jobs", "parent_id")
