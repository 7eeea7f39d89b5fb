"""The game's database (SQLAlchemy Core): SQLite by default (WAL), PostgreSQL by URL.

Tables:

- ``participants``: one row per session: ``participant`` (the crowd platform's id, unique per
  study: a second session is refused), platform ids, the server-issued ``token`` (unique,
  random), the next position to show, start and end times.
- ``trials``: the sequence the server built for each participant (image, kind, repeat, lag):
  the truth the responses are scored against; the client never sees kinds or lags.
- ``responses``: one row per answered trial, primary key ``(participant_id, position)``, so a
  response is stored once; written in the same transaction that advances ``next_position``.
"""

from __future__ import annotations

import datetime as dt
import secrets

import numpy as np
import pandas as pd
import sqlalchemy as sa

from neuromem.errors import InputError

metadata = sa.MetaData()

participants = sa.Table(
    "participants", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(200), nullable=False),
    sa.Column("participant", sa.String(200), nullable=False),
    sa.Column("platform", sa.String(40), nullable=False),
    sa.Column("study_key", sa.String(200)),
    sa.Column("session_key", sa.String(200)),
    sa.Column("token", sa.String(64), nullable=False, unique=True),
    sa.Column("next_position", sa.Integer, nullable=False, default=0),
    sa.Column("n_trials", sa.Integer, nullable=False),
    sa.Column("started", sa.DateTime, nullable=False),
    sa.Column("finished", sa.DateTime),
    sa.UniqueConstraint("study", "participant", name="one_session_per_participant"),
)

trials = sa.Table(
    "trials", metadata,
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("repeat", sa.Boolean, nullable=False),
    sa.Column("lag", sa.Integer),
)

responses = sa.Table(
    "responses", metadata,
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("responded", sa.Boolean, nullable=False),
    sa.Column("rt_ms", sa.Float),
    sa.Column("received", sa.DateTime, nullable=False),
)


def connect(url: str) -> sa.Engine:
    """An engine for ``url`` (``sqlite:///study.db``, ``postgresql://...``) with the tables.

    SQLite runs in WAL mode with a busy timeout, so concurrent participants do not block each
    other's reads.

    Raises
    ------
    InputError
        When the database cannot be reached or created.
    """
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as error:
        raise InputError(f"bad database URL {url!r}: {error}") from None
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    try:
        metadata.create_all(engine)
    except sa.exc.OperationalError as error:
        raise InputError(f"cannot open database {engine.url.render_as_string()}: "
                         f"{str(error.orig).splitlines()[0]}") from None
    return engine


def now() -> dt.datetime:
    """UTC now, naive (stored as UTC in every dialect)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_token() -> str:
    """A random session token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def times_target(engine: sa.Engine, study: str) -> dict[str, int]:
    """How many participants have had each image as a target so far."""
    query = (sa.select(trials.c.image_id, sa.func.count())
             .join(participants, participants.c.id == trials.c.participant_id)
             .where(participants.c.study == study, trials.c.kind == "target",
                    trials.c.repeat.is_(False))
             .group_by(trials.c.image_id))
    with engine.connect() as connection:
        return {image_id: int(count) for image_id, count in connection.execute(query)}


def responses_frame(engine: sa.Engine, study) -> pd.DataFrame:
    """Every shown trial of every participant with its response (the frame scoring reads).

    Returns
    -------
    pandas.DataFrame
        ``participant``, ``position``, ``image_id``, ``kind``, ``repeat``, ``lag`` (NaN unless a
        repeat), ``response`` (bool), ``rt_ms`` (NaN without a response), ``condition`` and
        ``pair`` (from the study), one row per answered trial.
    """
    query = (sa.select(participants.c.participant, trials.c.position, trials.c.image_id,
                       trials.c.kind, trials.c.repeat, trials.c.lag,
                       responses.c.responded.label("response"), responses.c.rt_ms)
             .join(trials, trials.c.participant_id == participants.c.id)
             .join(responses, (responses.c.participant_id == trials.c.participant_id)
                   & (responses.c.position == trials.c.position))
             .where(participants.c.study == study.name)
             .order_by(participants.c.participant, trials.c.position))
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).mappings().all(),
                             columns=["participant", "position", "image_id", "kind", "repeat",
                                      "lag", "response", "rt_ms"])
    if frame.empty and not study.images:
        raise InputError(f"study {study.name} has no images")
    frame["lag"] = frame["lag"].astype(float)
    frame["rt_ms"] = frame["rt_ms"].astype(float)
    frame["response"] = frame["response"].astype(bool)
    frame["repeat"] = frame["repeat"].astype(bool)
    images = study.by_id
    frame["condition"] = [images[i].condition if i in images else None for i in frame["image_id"]]
    frame["pair"] = [images[i].pair if i in images else None for i in frame["image_id"]]
    return frame


def progress(engine: sa.Engine, study: str) -> dict[str, int | float]:
    """Counts for the admin view: sessions started and finished, responses stored."""
    with engine.connect() as connection:
        started = connection.execute(sa.select(sa.func.count()).select_from(participants)
                                     .where(participants.c.study == study)).scalar_one()
        finished = connection.execute(sa.select(sa.func.count()).select_from(participants)
                                      .where(participants.c.study == study,
                                             participants.c.finished.is_not(None))).scalar_one()
        stored = connection.execute(
            sa.select(sa.func.count()).select_from(responses)
            .join(participants, participants.c.id == responses.c.participant_id)
            .where(participants.c.study == study)).scalar_one()
    return {"sessions": int(started), "finished": int(finished), "responses": int(stored),
            "mean_responses": float(np.divide(stored, started)) if started else 0.0}
