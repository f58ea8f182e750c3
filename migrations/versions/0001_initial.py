"""The schema as it was before migrations: users (with one token digest each) and documents.

Revision ID: 0001
Revises:
Create Date: 2026-12-01

A database that `create_all` made before livedoc had migrations already holds these tables: this
revision then adopts them as they are, so `flask db upgrade` takes it on from here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    """Create user and document (or adopt them when create_all made them)."""
    if sa.inspect(op.get_bind()).has_table("user"):
        return
    op.create_table(
        "user",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("token_digest", sa.String(64), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "document",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("user.id"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.String(500), nullable=True),
        sa.Column("error_retryable", sa.Boolean(), nullable=True),
    )
    op.create_index("ix_document_owner_id", "document", ["owner_id"])


def downgrade():
    """Drop both tables."""
    op.drop_index("ix_document_owner_id", table_name="document")
    op.drop_table("document")
    op.drop_table("user")
