"""progress within a unit of a job's progress: jobs.progress_detail

A training job counts epochs; an epoch on two cores takes minutes, so its batches within the epoch
are reported too ({"batches": {"done": n, "total": m}}), for progress bars and a time estimate.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("progress_detail", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "progress_detail")
