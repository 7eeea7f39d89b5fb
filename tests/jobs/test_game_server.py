"""The memory game served for real: uvicorn on 127.0.0.1 with SQLite, and with a PostgreSQL
server started here; 50 simulated participants at once through the HTTP API; hostile requests.

The PostgreSQL server is Debian's (``make system-packages``): ``initdb`` in a temporary folder
(as the ``postgres`` user when the tests run as root), a free port, stopped at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from scipy import stats

from neuromem.cli import main
from neuromem.game import db, scoring
from neuromem.game.app import MAX_BODY, create_app
from neuromem.game.export import read_scores
from neuromem.game.server import background
from neuromem.game.simulate import Behaviour, play_participant, simulate
from neuromem.game.study import make_study

REPO = Path(__file__).resolve().parents[2]
N_PARTICIPANTS = 50
N_MEASURED = 20
#: Short lags so a session is 40 trials: 10 targets (repeat after 8-12), 4 vigilance pairs.
SEQUENCE = {"length": 40, "targets": 10, "target_lag": [8, 12], "vigilance": 4,
            "vigilance_lag": [1, 4]}
ADMIN = "admin-token-" + "x" * 24


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study of 20 measured images (10 base/lora pairs) and 16 fillers, with their true
    memorability (spread over 0.1-0.95)."""
    folder = tmp_path_factory.mktemp("game")
    rng = np.random.default_rng(0)
    images = []
    for k in range(N_MEASURED + 16):
        path = folder / "images" / f"im{k:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        measured = k < N_MEASURED
        images.append({"image_id": f"{'m' if measured else 'f'}{k:02d}", "path": path,
                       "condition": ("base", "lora")[k % 2] if measured else None,
                       "pair": f"p{k // 2}" if measured else None})
    loaded = make_study(folder / "study.yaml", name="load", images=images, sequence=SEQUENCE,
                        flags={"max_vigilance_miss": 0.5, "max_false_alarm": 0.3})
    truth = dict(zip(loaded.target_ids, rng.permutation(np.linspace(0.1, 0.95, N_MEASURED)),
                     strict=True))
    return loaded, truth


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a free local port; yields a function making a fresh database URL."""
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="neuromem-pg-"))
    as_root = os.geteuid() == 0
    if as_root:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")

    def pg(*command):
        prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        return subprocess.run(prefix + [str(c) for c in command], check=True,
                              capture_output=True, text=True)

    port = _free_port()
    pg(bindir / "initdb", "-D", root / "data", "-A", "trust", "-U", "postgres", "-E", "UTF8",
       "--no-sync")
    pg(bindir / "pg_ctl", "-D", root / "data", "-l", root / "server.log", "-w", "-o",
       f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    server = f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    made = []

    def new_database() -> str:
        name = f"game{len(made)}"
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        made.append(name)
        return f"{server}/{name}"

    try:
        yield new_database
    finally:
        admin.dispose()
        pg(bindir / "pg_ctl", "-D", root / "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _stored(engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {table.name: connection.execute(
            sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (db.participants, db.trials, db.responses)}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fifty_participants_at_once_every_response_stored_once(backend, study, tmp_path,
                                                               request):
    study, truth = study
    study_file = study.images[0].path.parent.parent / "study.yaml"
    url = (f"sqlite:///{tmp_path / 'game.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres")())
    engine = db.connect(url)
    length = SEQUENCE["length"]
    with background(create_app(study, engine, ADMIN, seed=0)) as base:
        played = simulate(base, truth, N_PARTICIPANTS, concurrency=N_PARTICIPANTS, seed=1,
                          behaviour=Behaviour(noise=0.0, false_alarm=0.02, short_lag=4))
        admin = httpx.get(f"{base}/admin", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert [r["trials"] for r in played] == [length] * N_PARTICIPANTS
    assert {r["completion_code"] for r in played} == {study.completion_code}

    # every response stored once: each participant answered positions 0..length-1, no more
    with engine.connect() as connection:
        answered = connection.execute(sa.select(db.responses.c.participant_id,
                                                db.responses.c.position)).all()
        sessions = connection.execute(sa.select(db.participants)).all()
    assert len(answered) == N_PARTICIPANTS * length == len(set(answered))
    by_participant: dict[int, list[int]] = {}
    for participant_id, position in answered:
        by_participant.setdefault(participant_id, []).append(position)
    assert all(sorted(p) == list(range(length)) for p in by_participant.values())
    assert len(sessions) == N_PARTICIPANTS
    assert all(s.next_position == length and s.finished is not None for s in sessions)
    assert {k: admin[k] for k in ("sessions", "finished", "responses")} == {
        "sessions": N_PARTICIPANTS, "finished": N_PARTICIPANTS,
        "responses": N_PARTICIPANTS * length}
    assert admin["flagged"] == []

    # the sequences the server built: counterbalanced targets, lags in range
    frame = db.responses_frame(engine, study)
    firsts = frame[(frame["kind"] == "target") & ~frame["repeat"]]
    times = firsts["image_id"].value_counts()
    assert set(times.index) == set(study.target_ids)
    assert times.max() - times.min() <= 1
    assert times.sum() == N_PARTICIPANTS * SEQUENCE["targets"]
    assert not firsts.duplicated(["participant", "image_id"]).any()
    twins = frame.dropna(subset=["pair"]).drop_duplicates(["participant", "image_id"])
    assert not twins.duplicated(["participant", "pair"]).any()  # never both images of a pair
    repeats = frame[frame["repeat"]]
    low, high = SEQUENCE["target_lag"]
    assert repeats.loc[repeats["kind"] == "target", "lag"].between(low, high).all()
    low, high = SEQUENCE["vigilance_lag"]
    assert repeats.loc[repeats["kind"] == "vigilance", "lag"].between(low, high).all()

    # `neuromem game export`: the scores recover the simulated memorability, and the split-half
    # consistency is what binomial noise around the truth gives
    out = tmp_path / "human.parquet"
    assert main(["game", "export", str(study_file), "--db", url, "--out", str(out),
                 "--splits", "200"]) == 0
    scores, record = read_scores(str(out))
    assert sorted(scores["image_id"]) == sorted(study.target_ids)
    assert (scores["n_participants"] == times.reindex(scores["image_id"]).to_numpy()).all()
    true = scores["image_id"].map(truth).to_numpy()
    assert stats.spearmanr(scores["memorability_human"], true).statistic >= 0.8
    assert stats.spearmanr(scores["hit_rate"], true).statistic >= 0.8
    assert record["n_participants"] == N_PARTICIPANTS and record["flagged"] == []
    assert record["reference_lag"] == 10.0  # the middle of target_lag
    per_half = N_PARTICIPANTS * SEQUENCE["targets"] / N_MEASURED / 2
    expected = scoring.expected_split_half(true, per_half)
    assert record["split_half"]["rho"] == pytest.approx(expected, abs=0.1)
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, study, tmp_path_factory):
    """A server for the hostile requests, on each database: (base URL, engine, study)."""
    study, _ = study
    engine = db.connect(f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'game.db'}"
                        if request.param == "sqlite" else request.getfixturevalue("postgres")())
    with background(create_app(study, engine, ADMIN, seed=0)) as base:
        yield base, engine, study
    engine.dispose()


def _session(client, participant: str) -> str:
    reply = client.post("/api/session", json={"participant": participant})
    assert reply.status_code == 201, reply.text
    return reply.json()["token"]


def _answer(client, token, position, changes: dict | None = None) -> httpx.Response:
    """A response to ``position`` (no key press), with ``changes`` replacing any of its fields."""
    return client.post("/api/response", json={"token": token, "position": position,
                                              "responded": False, "rt_ms": None} | (changes or {}))


def test_bad_tokens_replays_and_skips_are_refused_and_nothing_stored(served):
    base, engine, _ = served
    with httpx.Client(base_url=base) as client:
        token = _session(client, "replayer")
        before = _stored(engine)
        for bad in ("", "x" * 65, "not-a-token", token[:-1] + ("A" if token[-1] != "A" else "B"),
                    token + "\x00", "\x00", "' OR 1=1 --", 12345, ["list"]):
            assert _answer(client, bad, 0).status_code in (401, 422)
            assert client.get("/api/next", params={"token": bad}).status_code in (401, 422)
        assert client.get("/api/next").status_code == 401
        assert _answer(client, token, 1).status_code == 409  # not the next position
        assert _answer(client, token, -1).status_code == 409
        assert _stored(engine) == before

        first = _answer(client, token, 0)
        assert first.status_code == 200 and first.json()["position"] == 1
        after = _stored(engine)
        assert after["responses"] == before["responses"] + 1
        # the same response replayed, and a changed answer for the same position
        assert _answer(client, token, 0).status_code == 409
        assert _answer(client, token, 0, {"responded": True, "rt_ms": 300.0}).status_code == 409
        assert client.get("/api/next", params={"token": token}).json()["position"] == 1
        assert _stored(engine) == after


def test_malformed_and_oversized_requests_are_refused(served):
    base, engine, _ = served
    with httpx.Client(base_url=base) as client:
        token = _session(client, "malformed")
        before = _stored(engine)
        for body, status in ((b"{not json", 400), (b"", 400), (b"\xff\xfe", 400),
                             (b"[1, 2]", 422), (b'"text"', 422)):
            assert client.post("/api/response", content=body,
                               headers={"Content-Type": "application/json"}
                               ).status_code == status, body
            assert client.post("/api/session", content=body).status_code == status, body
        for fields in ({"position": 0.5}, {"position": True}, {"position": None},
                       {"token": None}, {"token": 5}, {"responded": "yes"}, {"responded": 1},
                       {"responded": True, "rt_ms": None}, {"responded": False, "rt_ms": 200.0},
                       {"responded": True, "rt_ms": -5.0}, {"responded": True, "rt_ms": 1e9},
                       {"responded": True, "rt_ms": "fast"}):
            assert _answer(client, token, 0, fields).status_code == 422, fields
        assert _answer(client, token, "0").status_code == 422
        nan = b'{"token": "%s", "position": 0, "responded": true, "rt_ms": NaN}' % token.encode()
        assert client.post("/api/response", content=nan).status_code == 422
        for payload in ({}, {"participant": ""}, {"participant": 7}, {"participant": "p" * 201},
                        {"participant": "ok", "platform": "elsewhere"},
                        {"participant": "nul\x00byte"}, {"participant": "line\nbreak"},
                        {"participant": "ok", "study_key": "\x00"},
                        {"participant": "ok", "session_key": "\x1b[31m"}):
            assert client.post("/api/session", json=payload).status_code == 422, payload

        big = {"participant": "big", "padding": "x" * (MAX_BODY + 1)}
        assert client.post("/api/session", json=big).status_code == 413
        # no Content-Length (chunked): the limit holds while the body streams in
        chunks = iter([b'{"participant": "chunked", "padding": "', b"x" * MAX_BODY, b'"}'])
        assert client.post("/api/session", content=chunks).status_code == 413
        assert client.post("/api/response", content=b"{" + b" " * (64 * MAX_BODY) + b"}"
                           ).status_code == 413
        assert client.get("/api/session").status_code == 405
        assert _stored(engine) == before


def test_second_session_for_a_participant_is_refused(served):
    base, engine, _ = served
    with httpx.Client(base_url=base) as client:
        token = _session(client, "PID-twice")
        before = _stored(engine)
        for platform in ("direct", "prolific", "mturk"):
            reply = client.post("/api/session", json={"participant": "PID-twice",
                                                      "platform": platform})
            assert reply.status_code == 409 and "token" not in reply.json()
        assert _stored(engine) == before
        # the first session still works
        assert client.get("/api/next", params={"token": token}).json()["position"] == 0


def test_only_the_studys_images_are_served(served):
    base, _, study = served
    image = study.images[0]
    secret = (image.path.parent.parent / "study.yaml").read_bytes()
    with httpx.Client(base_url=base) as client:
        reply = client.get(f"/images/{image.image_id}")
        assert reply.status_code == 200 and reply.content == image.path.read_bytes()
        for path in ("/images/study.yaml", "/images/../study.yaml", "/images/..%2Fstudy.yaml",
                     "/images/%2e%2e/%2e%2e/study.yaml", f"/images/{image.path}",
                     f"/images/{image.path.name}", "/images/..%2F..%2F..%2Fetc%2Fpasswd",
                     "/static/..%2Fapp.py", "/static/../app.py", "/static/%2e%2e/app.py",
                     "/static/index.html/../../app.py", "/images/", "/admin/../app.py"):
            reply = client.get(httpx.URL(base + path))
            assert reply.status_code in (401, 404), path
            assert reply.content != secret and b"import" not in reply.content, path
        assert client.get("/static/game.js").status_code == 200


def test_admin_view_needs_its_token_which_no_page_shows(served):
    base, engine, _ = served
    with httpx.Client(base_url=base) as client:
        for headers in ({}, {"Authorization": ADMIN}, {"Authorization": f"Bearer {ADMIN}x"},
                        {"Authorization": "Bearer"}, {"Authorization": f"Basic {ADMIN}"}):
            assert client.get("/admin", headers=headers).status_code == 401, headers
        assert client.get("/admin", params={"token": ADMIN}).status_code == 401
        reply = client.get("/admin", headers={"Authorization": f"Bearer {ADMIN}"})
        assert reply.status_code == 200
        assert reply.json()["sessions"] == _stored(engine)["participants"]
        token = _session(client, "looker")
        pages = [client.get(path).text for path in ("/", "/static/game.js", "/static/game.css",
                                                   f"/api/next?token={token}")]
        pages.append(_answer(client, token, 0).text)
        assert not any(ADMIN in page for page in pages)


def test_sloppy_participants_are_flagged(served, study):
    """A participant who false-alarms at most first showings, one who misses the vigilance
    repeats, and one who presses within 140 ms of image onset, are flagged in the admin view;
    a careful one is not."""
    base, _, _ = served
    _, truth = study
    play_participant(base, "careful", truth, Behaviour(noise=0, false_alarm=0.0,
                                                       vigilance_hit=1.0, short_lag=4), 0)
    play_participant(base, "trigger-happy", truth, Behaviour(false_alarm=0.9, short_lag=4), 1)
    play_participant(base, "asleep", truth, Behaviour(vigilance_hit=0.0, false_alarm=0.0,
                                                      short_lag=4), 2)
    play_participant(base, "hasty", truth, Behaviour(noise=0, false_alarm=0.0, vigilance_hit=1.0,
                                                     short_lag=4, rt_fraction=(0.0, 0.1)), 3)
    flagged = httpx.get(f"{base}/admin", headers={"Authorization": f"Bearer {ADMIN}"}
                        ).json()["flagged"]
    assert {"trigger-happy", "asleep", "hasty"} <= set(flagged) and "careful" not in flagged


def test_session_starts_past_the_rate_of_an_address_are_refused(study, tmp_path):
    """Four session starts from one address with a limit of 3 a minute: the fourth gets 429 with
    Retry-After and stores nothing; once the first start is a minute old, one more is allowed."""
    study, _ = study
    engine = db.connect(f"sqlite:///{tmp_path / 'game.db'}")
    app = create_app(study, engine, ADMIN, seed=0, sessions_per_minute=3)
    now = [1000.0]
    app.state.game.clock = lambda: now[0]
    with background(app) as base, httpx.Client(base_url=base) as client:
        for k in range(3):
            _session(client, f"lab-{k}")
            now[0] += 10.0
        before = _stored(engine)
        refused = client.post("/api/session", json={"participant": "lab-3"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
        assert "new sessions a minute" in refused.json()["error"]
        assert _stored(engine) == before
        now[0] = 1060.0  # the first start has left the window
        _session(client, "lab-3")
    engine.dispose()


def test_serve_command_keeps_tokens_out_of_its_output(study, tmp_path):
    """``neuromem game serve`` in its own process: the admin token file is created private and
    works; neither it nor a participant's session token appears in what the server prints."""
    study, truth = study
    study_file = study.images[0].path.parent.parent / "study.yaml"
    port, token_file = _free_port(), tmp_path / "secret" / "admin_token"
    server = subprocess.Popen(
        [sys.executable, "-m", "neuromem.cli", "game", "serve", str(study_file),
         "--db", f"sqlite:///{tmp_path / 'serve.db'}", "--port", str(port),
         "--admin-token-file", str(token_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:  # until the server answers (or exits)
            try:
                httpx.get(f"{base}/static/game.css").raise_for_status()
                break
            except httpx.TransportError:
                with pytest.raises(subprocess.TimeoutExpired):
                    server.wait(timeout=0.2)
        admin = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600 and len(admin) >= 32
        with httpx.Client(base_url=base) as client:
            token = _session(client, "PID-serve")
            assert _answer(client, token, 0).status_code == 200
            assert client.get(f"/api/next?token={token}").json()["position"] == 1
            assert client.get("/admin", headers={"Authorization": f"Bearer {admin}"}
                              ).json()["responses"] == 1
            assert client.get("/admin", headers={"Authorization": "Bearer wrong"}
                              ).status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert str(token_file) in out  # where the token is, never the token
    for secret in (admin, token):
        assert secret not in out + err


def test_image_ids_that_are_not_url_safe_are_served(tmp_path):
    """Ids made from file names (spaces, '#', '?', '%', non-ASCII) reach the right image through
    the URL the API gives, on every trial of a whole session."""
    ids = ["base/IMG 001", "lora/IMG #2", "what?.x=1", "100% real", "café/été", "a&b=c"]
    images, content = [], {}
    for k, image_id in enumerate(ids):
        path = tmp_path / f"{k}.png"
        Image.new("RGB", (4, 4), (40 * k, 0, 0)).save(path)
        content[image_id] = path.read_bytes()
        images.append({"image_id": image_id, "path": path,
                       "condition": "base" if k < 2 else None})
    study = make_study(tmp_path / "study.yaml", name="odd", images=images,
                       sequence={"length": 6, "targets": 1, "target_lag": [2, 3],
                                 "vigilance": 1, "vigilance_lag": [1, 1]})
    engine = db.connect(f"sqlite:///{tmp_path / 'game.db'}")
    with background(create_app(study, engine, ADMIN)) as base, \
            httpx.Client(base_url=base) as client:
        for participant in ("p1", "p2"):
            token = _session(client, participant)
            trial = client.get("/api/next", params={"token": token}).json()
            shown = []
            while not trial["done"]:
                image = client.get(trial["image"])
                assert image.status_code == 200, trial["image"]
                shown.append(next(i for i, data in content.items() if data == image.content))
                trial = _answer(client, token, trial["position"]).json()
            frame = db.responses_frame(engine, study)
            assert shown == frame.loc[frame["participant"] == participant, "image_id"].tolist()
        # simulated participants find the ids behind the URLs: the measured images (true
        # memorability 1) are recognised at every target repeat, nothing else draws a response
        played = simulate(base, {"base/IMG 001": 1.0, "lora/IMG #2": 1.0}, 8, seed=3,
                          behaviour=Behaviour(noise=0, vigilance_hit=0, false_alarm=0,
                                              short_lag=1))
        assert [r["trials"] for r in played] == [6] * 8
    frame = db.responses_frame(engine, study)
    frame = frame[frame["participant"].str.startswith("sim")]
    target_repeat = (frame["kind"] == "target") & frame["repeat"]
    assert frame.loc[target_repeat, "response"].all() and target_repeat.sum() == 8
    assert not frame.loc[~target_repeat, "response"].any()
    engine.dispose()


def test_simultaneous_duplicates_store_one(served):
    """The same response sent 12 times at once, and 12 sessions for one participant at once:
    one is accepted, the others refused (409), one row stored."""
    base, engine, _ = served

    def at_once(send) -> list[int]:
        with ThreadPoolExecutor(12) as pool, httpx.Client(base_url=base) as client:
            return sorted(pool.map(lambda _: send(client).status_code, range(12)))

    statuses = at_once(lambda c: c.post("/api/session", json={"participant": "PID-race"}))
    assert statuses == [201] + [409] * 11
    with engine.connect() as connection:
        token = connection.execute(sa.select(db.participants.c.token).where(
            db.participants.c.participant == "PID-race")).scalar_one()
    before = _stored(engine)
    assert at_once(lambda c: _answer(c, token, 0)) == [200] + [409] * 11
    assert _stored(engine)["responses"] == before["responses"] + 1
