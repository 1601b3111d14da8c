"""API tokens, and the token that owns each job

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.add_column("jobs", sa.Column("owner_token_id", sa.Uuid(), nullable=True))
    op.create_foreign_key("jobs_owner_token_id_fkey", "jobs", "api_tokens", ["owner_token_id"], ["id"])
    op.create_index("ix_jobs_owner_token_id", "jobs", ["owner_token_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_token_id", table_name="jobs")
    op.drop_constraint("jobs_owner_token_id_fkey", "jobs", type_="foreignkey")
    op.drop_column("jobs", "owner_token_id")
    op.drop_table("api_tokens")
