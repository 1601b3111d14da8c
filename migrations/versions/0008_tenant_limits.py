"""tenants kept apart: a token's own input roots and quotas; Idempotency-Keys scoped to their owner

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("roots", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column("api_tokens", sa.Column("max_active_jobs", sa.Integer(), nullable=True))
    op.add_column("api_tokens", sa.Column("max_active_files", sa.BigInteger(), nullable=True))
    op.drop_constraint("jobs_idempotency_key_key", "jobs", type_="unique")
    # NULLS NOT DISTINCT: with authentication off every request is one owner (NULL), one key space.
    op.create_index(
        "jobs_owner_token_id_idempotency_key",
        "jobs",
        ["owner_token_id", "idempotency_key"],
        unique=True,
        postgresql_nulls_not_distinct=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    # The quota counts an owner's queued and running jobs.
    op.create_index("jobs_owner_token_id_status", "jobs", ["owner_token_id", "status"])


def downgrade() -> None:
    op.drop_index("jobs_owner_token_id_status", table_name="jobs")
    op.drop_index("jobs_owner_token_id_idempotency_key", table_name="jobs")
    op.create_unique_constraint("jobs_idempotency_key_key", "jobs", ["idempotency_key"])
    op.drop_column("api_tokens", "max_active_files")
    op.drop_column("api_tokens", "max_active_jobs")
    op.drop_column("api_tokens", "roots")
