"""evaluation jobs: jobs of type 'evaluate', and each result row may carry the file's true label
(predictions.true_label)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("true_label", sa.String(length=128), nullable=True))
    op.drop_constraint("jobs_type_valid", "jobs", type_="check")
    op.create_check_constraint("jobs_type_valid", "jobs", "type IN ('train', 'predict', 'evaluate')")


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE type = 'evaluate'")
    op.drop_constraint("jobs_type_valid", "jobs", type_="check")
    op.create_check_constraint("jobs_type_valid", "jobs", "type IN ('train', 'predict')")
    op.drop_column("predictions", "true_label")
