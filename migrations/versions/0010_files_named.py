"""the files a job names up front, as a column: jobs.files_named

A job's quota counts its files: listed so far, else those its request named (a manifest's paths, an
upload's files). The API wrote that count into params in two shapes and the quota read it back with
SQL over both; the spec now says it once (service.specs ... files_named) and the row keeps it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("files_named", sa.BigInteger(), server_default="0", nullable=False))
    # Jobs submitted before: their count, read from their params as the quota used to read it.
    op.execute(
        """
        UPDATE jobs SET files_named = COALESCE(
            CASE WHEN jsonb_typeof(params->'input'->'paths') = 'array'
                 THEN jsonb_array_length(params->'input'->'paths') END,
            (params->'input'->'upload'->>'files')::bigint,
            0)
        WHERE params ? 'input'
        """
    )


def downgrade() -> None:
    op.drop_column("jobs", "files_named")
