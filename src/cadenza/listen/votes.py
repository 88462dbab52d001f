"""The vote database (SQLAlchemy Core): a SQLite file by default, PostgreSQL for a team.

One row per vote. A unique constraint on (study, pair, listener) makes "one vote per listener
per pair" the database's promise, so two racing requests cannot both be stored.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData()
votes = sa.Table(
    "listening_votes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(200), nullable=False),
    sa.Column("pair_id", sa.String(32), nullable=False),
    sa.Column("listener", sa.String(64), nullable=False),
    sa.Column("left_clip", sa.String(32), nullable=False),
    sa.Column("right_clip", sa.String(32), nullable=False),
    sa.Column("preferred_clip", sa.String(32), nullable=False),
    sa.Column("human_clip", sa.String(32), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("study", "pair_id", "listener", name="one_vote_per_listener_pair"),
)
COLUMNS = [c.name for c in votes.columns]


class DuplicateVote(Exception):
    """This listener already voted on this pair."""


def connect(url: str) -> sa.Engine:
    """An engine with the votes table created. SQLite gets WAL and a busy timeout, so
    concurrent listeners wait for the write lock instead of failing."""
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 reads this as psycopg 3
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _wal(connection, _record):
            connection.execute("PRAGMA journal_mode=WAL")

    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    try:
        metadata.create_all(engine)
    except sa.exc.OperationalError as exc:
        raise ValueError(f"vote database {engine.url!r}: cannot open it: {exc.orig}") from None
    return engine


def add_vote(engine: sa.Engine, **row) -> None:
    row["created_at"] = datetime.now(UTC)
    try:
        with engine.begin() as connection:
            connection.execute(votes.insert().values(**row))
    except sa.exc.IntegrityError:
        raise DuplicateVote(f"{row['listener']} already voted on pair {row['pair_id']}") from None


def voted_pairs(engine: sa.Engine, study: str, listener: str) -> set[str]:
    query = sa.select(votes.c.pair_id).where(votes.c.study == study, votes.c.listener == listener)
    with engine.connect() as connection:
        return set(connection.scalars(query))


def all_votes(engine: sa.Engine, study: str) -> list[dict]:
    query = sa.select(votes).where(votes.c.study == study).order_by(votes.c.id)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def to_csv(rows: list[dict], clips: dict[str, dict] | None = None) -> str:
    """Raw votes as CSV; with the study's clips, the source side of each clip too."""
    columns = COLUMNS + (["preferred_side", "human_side"] if clips else [])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        row = dict(row, created_at=row["created_at"].isoformat())
        if clips:
            row["preferred_side"] = clips[row["preferred_clip"]]["side"]
            human = row["human_clip"]
            row["human_side"] = clips[human]["side"] if human else ""
        writer.writerow(row)
    return out.getvalue()
