"""document.last_seq holds 64-bit seqs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

An ending derived after a job's record vanished from Redis takes a seq above any a job can reach by
writing: milliseconds since the epoch (livedoc/progress.vanished_seq), beyond a 32-bit integer.
PostgreSQL refused to store it ("integer out of range"), so the status of such a document failed.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INT32_MAX = 2**31 - 1


def upgrade():
    """Widen document.last_seq to a 64-bit integer."""
    with op.batch_alter_table("document") as batch:
        batch.alter_column(
            "last_seq", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False
        )


def downgrade():
    """Back to a 32-bit last_seq; larger seqs (vanished endings) become the largest it holds."""
    document = sa.table("document", sa.column("last_seq", sa.BigInteger))
    op.get_bind().execute(document.update().where(document.c.last_seq > INT32_MAX).values(last_seq=INT32_MAX))
    with op.batch_alter_table("document") as batch:
        batch.alter_column(
            "last_seq", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False
        )
