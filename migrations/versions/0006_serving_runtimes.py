"""what serving needs: a model's exports and per-machine runtime choices, the runtime each shard used

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "models",
        sa.Column("serving", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.add_column("job_shards", sa.Column("runtime", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("job_shards", "runtime")
    op.drop_column("models", "serving")
