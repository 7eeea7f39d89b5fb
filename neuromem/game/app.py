"""The memory game as an ASGI app (Starlette): the page, a JSON API, the study's images, an
admin view.

Participants are untrusted: every request is validated, bound to a server-issued session token,
and checked against the sequence the server built (the client never learns which trials are
repeats). A response is stored in the same transaction that advances the session, before the
next trial is sent; a replayed or out-of-order response is refused (409) and nothing is stored.
Only the study's own images are served, by id. The admin token is compared in constant time and
never put in pages or logs.

Routes
------
``GET /``                    the page (``?PROLIFIC_PID=..&STUDY_ID=..&SESSION_ID=..`` or MTurk's
                             ``workerId``/``assignmentId``)
``POST /api/session``        ``{participant, platform?, study_key?, session_key?}`` → 201
                             ``{token, total, image_ms, gap_ms}``; 409 for a second session;
                             429 (``Retry-After``) past the client address's session rate
``GET /api/next``            ``?token=`` → ``{position, image, total}`` or ``{done, completion_code}``
``POST /api/response``       ``{token, position, responded, rt_ms}`` → the next trial, as above
``GET /images/{image_id}``   a study image
``GET /admin``               ``Authorization: Bearer TOKEN`` → progress and flagged participants
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
from collections import defaultdict, deque
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import numpy as np
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.routing import Route

from neuromem.game import db
from neuromem.game.scoring import participant_flags
from neuromem.game.sequence import build_sequence, choose_targets
from neuromem.game.server import SESSIONS_PER_MINUTE
from neuromem.game.study import Study

log = logging.getLogger(__name__)

#: Largest request body accepted, bytes.
MAX_BODY = 2048
#: Timer slack allowed beyond a trial's response window (image + gap), ms.
RT_SLACK_MS = 1000
#: What a session token looks like (:func:`neuromem.game.db.new_token`, URL-safe base64).
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Platforms a session may name.
PLATFORMS = ("prolific", "mturk", "direct")
STATIC = Path(__file__).with_name("static")


class BadRequest(Exception):
    """A request the API refuses; ``status`` is the HTTP status, ``headers`` extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


async def _json_body(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise BadRequest(413, f"request body over {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(413, f"request body over {MAX_BODY} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest(422, "the body must be a JSON object")
    return payload


def _field(payload: dict, name: str, kind, *, required: bool = True, max_len: int = 200):
    value = payload.get(name)
    if value is None:
        if required:
            raise BadRequest(422, f"'{name}' is required")
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(422, f"'{name}' must be {kind.__name__}")
    if kind is str and not 0 < len(value) <= max_len:
        raise BadRequest(422, f"'{name}' must be 1 to {max_len} characters")
    if kind is str and not value.isprintable():  # NUL breaks PostgreSQL; escapes garble logs
        raise BadRequest(422, f"'{name}' must be printable text")
    if kind is float and not math.isfinite(value):
        raise BadRequest(422, f"'{name}' must be finite")
    return value


class GameApp:
    """State of one served study: the study, the database, the admin token, a seeded RNG, and
    the recent session starts of each client address (``sessions_per_minute`` of them at most
    in any 60 s; 0: no limit)."""

    def __init__(self, study: Study, engine: sa.Engine, admin_token: str, seed: int = 0,
                 sessions_per_minute: int = SESSIONS_PER_MINUTE):
        if len(admin_token) < 16:
            raise ValueError("the admin token must have at least 16 characters")
        if sessions_per_minute < 0:
            raise ValueError("sessions_per_minute must be 0 (no limit) or positive")
        self.study, self.engine, self.admin_token = study, engine, admin_token
        self.rng = np.random.default_rng(seed)
        self.sessions_per_minute = sessions_per_minute
        self.clock = time.monotonic
        self._starts: dict[str, deque[float]] = defaultdict(deque)

    # -- helpers ------------------------------------------------------------------------------

    def _session(self, connection, token) -> sa.Row:
        if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
            raise BadRequest(401, "missing or malformed session token")
        row = connection.execute(sa.select(db.participants).where(
            db.participants.c.token == token, db.participants.c.study == self.study.name)).first()
        if row is None:
            raise BadRequest(401, "unknown session token")
        return row

    def _next(self, connection, participant_id: int, position: int, total: int) -> dict:
        """The trial at ``position`` of a session of ``total`` trials (or its end)."""
        if position >= total:
            return {"done": True, "completion_code": self.study.completion_code, "total": total}
        image_id = connection.execute(sa.select(db.trials.c.image_id).where(
            db.trials.c.participant_id == participant_id,
            db.trials.c.position == position)).scalar_one()
        return {"done": False, "position": position,
                "image": f"/images/{quote(image_id, safe='/')}", "total": total}

    def _check_rate(self, request: Request) -> None:
        """Refuse (429) a session start past the client address's rate; count it otherwise."""
        if not self.sessions_per_minute:
            return
        now = self.clock()
        starts = self._starts[request.client.host if request.client else ""]
        while starts and now - starts[0] >= 60.0:
            starts.popleft()
        if len(starts) >= self.sessions_per_minute:
            raise BadRequest(429, f"more than {self.sessions_per_minute} new sessions a minute "
                                  "from this address; try again shortly",
                             headers={"Retry-After": str(math.ceil(60.0 - (now - starts[0])))})
        starts.append(now)

    # -- routes -------------------------------------------------------------------------------

    async def page(self, request: Request):
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    async def static(self, request: Request):
        name = request.path_params["name"]
        if name not in ("game.js", "game.css"):
            raise BadRequest(404, "not found")
        return FileResponse(STATIC / name)

    async def image(self, request: Request):
        image = self.study.by_id.get(request.path_params["image_id"])
        if image is None:
            raise BadRequest(404, "no such image in this study")
        return FileResponse(image.path, headers={"Cache-Control": "private, max-age=3600"})

    async def new_session(self, request: Request):
        self._check_rate(request)
        payload = await _json_body(request)
        participant = _field(payload, "participant", str)
        platform = _field(payload, "platform", str, required=False) or "direct"
        if platform not in PLATFORMS:
            raise BadRequest(422, f"'platform' must be one of {', '.join(PLATFORMS)}")
        study_key = _field(payload, "study_key", str, required=False)
        session_key = _field(payload, "session_key", str, required=False)
        with self.engine.begin() as connection:
            exists = connection.execute(sa.select(db.participants.c.id).where(
                db.participants.c.study == self.study.name,
                db.participants.c.participant == participant)).first()
            if exists is not None:
                raise BadRequest(409, "this participant already has a session in this study")
            targets = choose_targets(self.study.target_ids,
                                     db.times_target(self.engine, self.study.name),
                                     self.study.sequence.targets, self.rng,
                                     {i.image_id: i.pair for i in self.study.images})
            sequence = build_sequence(self.study, targets, self.rng)
            token = db.new_token()
            try:
                participant_id = connection.execute(db.participants.insert().values(
                    study=self.study.name, participant=participant, platform=platform,
                    study_key=study_key, session_key=session_key, token=token,
                    next_position=0, n_trials=len(sequence), started=db.now())
                ).inserted_primary_key[0]
            except sa.exc.IntegrityError:
                raise BadRequest(409, "this participant already has a session in this "
                                      "study") from None
            connection.execute(db.trials.insert(), [
                {"participant_id": participant_id, "position": t.position, "image_id": t.image_id,
                 "kind": t.kind, "repeat": t.repeat, "lag": t.lag} for t in sequence])
        timing = self.study.timing
        return JSONResponse({"token": token, "total": len(sequence),
                             "image_ms": timing.image_ms, "gap_ms": timing.gap_ms}, 201)

    async def next_trial(self, request: Request):
        with self.engine.connect() as connection:
            session = self._session(connection, request.query_params.get("token"))
            return JSONResponse(self._next(connection, session.id, session.next_position,
                                           session.n_trials))

    async def response(self, request: Request):
        payload = await _json_body(request)
        token = _field(payload, "token", str, max_len=64)
        position = _field(payload, "position", int)
        responded = _field(payload, "responded", bool)
        rt_ms = _field(payload, "rt_ms", float, required=False)
        timing = self.study.timing
        if rt_ms is not None and not 0 <= rt_ms <= timing.image_ms + timing.gap_ms + RT_SLACK_MS:
            raise BadRequest(422, "'rt_ms' is outside the trial's response window")
        if responded != (rt_ms is not None):
            raise BadRequest(422, "'rt_ms' is given exactly when 'responded' is true")
        try:
            with self.engine.begin() as connection:
                session = self._session(connection, token)
                if session.finished is not None or position != session.next_position:
                    raise BadRequest(409, f"position {position} is not the next one "
                                          f"({session.next_position})")
                advanced = connection.execute(
                    db.participants.update()
                    .where(db.participants.c.id == session.id,
                           db.participants.c.next_position == position)
                    .values(next_position=position + 1,
                            finished=db.now() if position + 1 >= session.n_trials else None))
                if advanced.rowcount != 1:
                    raise BadRequest(409, "this response was already received")
                connection.execute(db.responses.insert().values(
                    participant_id=session.id, position=position, responded=responded,
                    rt_ms=rt_ms, received=db.now()))
                return JSONResponse(self._next(connection, session.id, position + 1,
                                               session.n_trials))
        except sa.exc.IntegrityError:
            raise BadRequest(409, "this response was already received") from None

    async def admin(self, request: Request):
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip()
        if not header.startswith("Bearer ") or not hmac.compare_digest(
                given.encode(), self.admin_token.encode()):
            raise BadRequest(401, "admin token required")
        report = db.progress(self.engine, self.study.name)
        frame = db.responses_frame(self.engine, self.study)
        if not frame.empty:
            flags = participant_flags(frame, **asdict(self.study.flags))
            report["flagged"] = flags.loc[flags["flagged"], "participant"].astype(str).tolist()
        else:
            report["flagged"] = []
        return JSONResponse(report)


def create_app(study: Study, engine: sa.Engine, admin_token: str, seed: int = 0,
               sessions_per_minute: int = SESSIONS_PER_MINUTE) -> Starlette:
    """The ASGI app serving ``study`` with responses stored through ``engine``; at most
    ``sessions_per_minute`` new sessions per client address in any 60 s (0: no limit). Its
    :class:`GameApp` is ``app.state.game``."""
    game = GameApp(study, engine, admin_token, seed, sessions_per_minute)

    async def refuse(request: Request, error: BadRequest):
        return JSONResponse({"error": str(error)}, error.status, headers=error.headers)

    app = Starlette(
        routes=[
            Route("/", game.page),
            Route("/static/{name}", game.static),
            Route("/images/{image_id:path}", game.image),
            Route("/api/session", game.new_session, methods=["POST"]),
            Route("/api/next", game.next_trial),
            Route("/api/response", game.response, methods=["POST"]),
            Route("/admin", game.admin),
        ],
        exception_handlers={BadRequest: refuse},
    )
    app.state.game = game
    return app
