"""keep the photo (downscaled) of each prediction, to derive training inputs from it; at most one active model

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ONE_ACTIVE = "status = 'active'"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("image", sa.LargeBinary(), nullable=True))
    # Two concurrent activations could leave two active rows before this index: keep the newest.
    op.execute(
        "UPDATE model_versions SET status = 'retired' WHERE status = 'active' AND version < "
        "(SELECT MAX(version) FROM model_versions WHERE status = 'active')"
    )
    op.create_index(
        "one_active_model",
        "model_versions",
        ["status"],
        unique=True,
        sqlite_where=sa.text(ONE_ACTIVE),
        postgresql_where=sa.text(ONE_ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("one_active_model", table_name="model_versions")
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("image")
