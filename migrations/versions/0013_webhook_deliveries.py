"""webhooks: a job's notify (jobs.notify), each token's signing secret (api_tokens.webhook_secret,
made here for the tokens that exist), and the deliveries of jobs' ends (deliveries)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

import secrets

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("notify", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column("api_tokens", sa.Column("webhook_secret", sa.String(length=128), nullable=True))
    connection = op.get_bind()
    # A secret of each token's own, as service.tokens.create_token makes one (not PostgreSQL's random()).
    for (token_id,) in connection.execute(sa.text("SELECT id FROM api_tokens")):
        connection.execute(
            sa.text("UPDATE api_tokens SET webhook_secret = :secret WHERE id = :id"),
            {"secret": "whsec_" + secrets.token_urlsafe(32), "id": token_id},
        )
    op.alter_column("api_tokens", "webhook_secret", nullable=False)
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "log", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="deliveries_status_valid"),
        sa.CheckConstraint("event IN ('succeeded', 'failed', 'cancelled')", name="deliveries_event_valid"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "event", name="deliveries_job_id_event_key"),
    )
    op.create_index("deliveries_due", "deliveries", ["next_attempt_at"], postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index("deliveries_due", table_name="deliveries", postgresql_where=sa.text("status = 'pending'"))
    op.drop_table("deliveries")
    op.drop_column("api_tokens", "webhook_secret")
    op.drop_column("jobs", "notify")
