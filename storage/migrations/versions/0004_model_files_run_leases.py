"""model files kept in the database, so that every replica can load every version; training runs hold a
lease that their process renews, and at most one runs at a time

Revision ID: 0004
Revises: 0003
"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ONE_RUNNING = "status = 'running'"
# A run still going on a replica that runs the previous code renews no lease: it gets the old code's own
# limit (2 x the default budget + 300 s) before another replica may fail it.
OLD_RUN_GRACE = timedelta(minutes=15)


def upgrade() -> None:
    op.create_table(
        "model_files",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    with op.batch_alter_table("training_runs") as batch_op:
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    runs = sa.table(
        "training_runs",
        sa.column("id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("error", sa.Text()),
        sa.column("finished_at", sa.DateTime(timezone=True)),
        sa.column("lease_expires_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    newest = sa.select(sa.func.max(runs.c.id)).where(runs.c.status == "running").scalar_subquery()
    # Before the index: older runs still marked running were abandoned (claims took turns); keep the newest.
    op.execute(
        runs.update()
        .where(runs.c.status == "running", runs.c.id < newest)
        .values(status="failed", error="interrupted: found running beside a newer run", finished_at=now)
    )
    op.execute(runs.update().where(runs.c.status == "running").values(lease_expires_at=now + OLD_RUN_GRACE))
    op.create_index(
        "one_running_run",
        "training_runs",
        ["status"],
        unique=True,
        sqlite_where=sa.text(ONE_RUNNING),
        postgresql_where=sa.text(ONE_RUNNING),
    )


def downgrade() -> None:
    op.drop_index("one_running_run", table_name="training_runs")
    with op.batch_alter_table("training_runs") as batch_op:
        batch_op.drop_column("lease_expires_at")
    op.drop_table("model_files")
