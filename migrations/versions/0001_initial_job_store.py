"""initial job store: jobs, job_transitions, plans, frame_results, observations, nodes

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UID = sa.String(64)
TS = sa.DateTime(timezone=True)


def _job_fk() -> sa.ForeignKey:
    return sa.ForeignKey("jobs.uid", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("uid", UID, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_info", sa.JSON(), nullable=True),
        sa.Column("dag", sa.JSON(), nullable=False),
        sa.Column("constraint", sa.JSON(), nullable=False),
        sa.Column("fixed_plan", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("seed_node_addr", sa.String(128), nullable=True),
        sa.Column("video_id", sa.String(64), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at"])

    op.create_table(
        "job_transitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_uid", UID, _job_fk(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_job_transitions_job", "job_transitions", ["job_uid", "id"])

    op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_uid", UID, _job_fk(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("planner", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("video_conf", sa.JSON(), nullable=False),
        sa.Column("flow_mapping", sa.JSON(), nullable=False),
    )
    op.create_index("ix_plans_job", "plans", ["job_uid", "id"])

    op.create_table(
        "frame_results",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_uid", UID, _job_fk(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=True),
        sa.Column("capture_ts", sa.Float(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("frame_bytes", sa.Integer(), nullable=False),
        sa.Column("lost", sa.Boolean(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.UniqueConstraint("job_uid", "seq", name="uq_frame_results_job_seq"),
    )

    op.create_table(
        "observations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_uid", UID, _job_fk(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("grade", sa.String(8), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("fps", sa.Float(), nullable=False),
        sa.Column("quality", sa.Integer(), nullable=False),
        sa.Column("frame_bytes", sa.Integer(), nullable=False),
        sa.Column("service_s", sa.Float(), nullable=False),
        sa.Column("queue_s", sa.Float(), nullable=False),
        sa.Column("transfer_s", sa.Float(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("node_load", sa.Float(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
    )
    op.create_index("ix_observations_job", "observations", ["job_uid", "id"])

    op.create_table(
        "nodes",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("address", sa.String(128), nullable=False),
        sa.Column("video_sources", sa.JSON(), nullable=False),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("last_heartbeat", TS, nullable=False),
        sa.Column("alive", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_nodes_address", "nodes", ["address"])


def downgrade() -> None:
    op.drop_index("ix_nodes_address", table_name="nodes")
    op.drop_table("nodes")
    op.drop_index("ix_observations_job", table_name="observations")
    op.drop_table("observations")
    op.drop_table("frame_results")
    op.drop_index("ix_plans_job", table_name="plans")
    op.drop_table("plans")
    op.drop_index("ix_job_transitions_job", table_name="job_transitions")
    op.drop_table("job_transitions")
    op.drop_index("ix_jobs_created", table_name="jobs")
    op.drop_index("ix_jobs_state_created", table_name="jobs")
    op.drop_table("jobs")
