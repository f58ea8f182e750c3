"""API tokens in their own table, a session version per user, stored bytes and last page per document.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Each user's one token digest becomes an api_token row named "default", so tokens issued before the
upgrade keep working; then user.token_digest goes. Batch mode, so SQLite (which cannot drop a
column in place on every version) gets the same result by copying the table.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    """Add the new columns and table, move the token digests, drop user.token_digest."""
    bind = op.get_bind()
    if sa.inspect(bind).has_table("api_token"):
        return  # create_all made the current schema before migrations existed: adopt it
    with op.batch_alter_table("user") as batch:
        batch.add_column(sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_api_token_user_id", "api_token", ["user_id"])

    user = sa.table("user", sa.column("id", sa.Integer), sa.column("token_digest", sa.String))
    api_token = sa.table(
        "api_token",
        sa.column("user_id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("digest", sa.String),
        sa.column("created_at", sa.DateTime),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = bind.execute(sa.select(user.c.id, user.c.token_digest).where(user.c.token_digest.is_not(None)))
    tokens = [
        {"user_id": uid, "name": "default", "digest": digest, "created_at": now} for uid, digest in rows
    ]
    if tokens:
        op.bulk_insert(api_token, tokens)

    with op.batch_alter_table("user") as batch:
        batch.drop_column("token_digest")
    with op.batch_alter_table("document") as batch:
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_page", sa.Integer(), nullable=False, server_default="0"))


def downgrade():
    """Back to one token per user (each user's newest live token), without the new columns."""
    bind = op.get_bind()
    with op.batch_alter_table("document") as batch:
        batch.drop_column("last_page")
        batch.drop_column("stored_bytes")
    with op.batch_alter_table("user") as batch:
        batch.add_column(sa.Column("token_digest", sa.String(64), nullable=True))
    api_token = sa.table(
        "api_token",
        sa.column("id", sa.Integer),
        sa.column("user_id", sa.Integer),
        sa.column("digest", sa.String),
        sa.column("revoked_at", sa.DateTime),
    )
    user = sa.table("user", sa.column("id", sa.Integer), sa.column("token_digest", sa.String))
    newest: dict[int, str] = {}
    for uid, digest in bind.execute(
        sa.select(api_token.c.user_id, api_token.c.digest)
        .where(api_token.c.revoked_at.is_(None))
        .order_by(api_token.c.id)
    ):
        newest[uid] = digest
    for uid, digest in newest.items():
        bind.execute(user.update().where(user.c.id == uid).values(token_digest=digest))
    with op.batch_alter_table("user") as batch:
        batch.create_unique_constraint("uq_user_token_digest", ["token_digest"])
        batch.drop_column("session_version")
    op.drop_index("ix_api_token_user_id", table_name="api_token")
    op.drop_table("api_token")
