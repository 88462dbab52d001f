"""The listening page: FastAPI with server-side Jinja2 templates, no JavaScript build.

GET  /                  the listener's next pair (two players, a vote form), or "thank you"
GET  /clip/{clip_id}    a clip of this study, by its opaque id; anything else is 404
POST /vote              pair, preferred clip, (optional) the clip that sounds composed by a
                        person, CSRF token; validated, stored once, then 303 back to /
GET  /admin/votes.csv   raw votes with their sources (needs the study's admin token)

Listeners are told apart by a random id in a signed cookie (itsdangerous); the CSRF token is
that id signed under another salt, so a form posted from another site (no cookie, or no token)
is refused. Anything invalid is answered 4xx and stores nothing.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and Request/Cookie/Form are imported inside create_app (cadenza --help stays instant).
import hashlib
import random
import secrets
from pathlib import Path

from fastapi import Cookie, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeSerializer

from cadenza.listen import votes
from cadenza.listen.study import Study

COOKIE = "cadenza_listener"
TEMPLATES = Path(__file__).parent / "templates"


def create_app(study: Study, database_url: str):
    engine = votes.connect(database_url)
    listener_signer = URLSafeSerializer(study.secret, salt="cadenza-listener")
    csrf_signer = URLSafeSerializer(study.secret, salt="cadenza-csrf")
    templates = Jinja2Templates(directory=str(TEMPLATES))
    pairs = study.pairs
    app = FastAPI(title="Cadenza listening test", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    def listener_of(cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            listener = listener_signer.loads(cookie)
        except BadSignature:
            return None
        return listener if isinstance(listener, str) else None

    def order_for(listener: str) -> list[str]:
        """The pairs in this listener's own random order."""
        seed = int.from_bytes(hashlib.sha256(listener.encode()).digest()[:8], "big")
        ids = sorted(pairs)
        random.Random(seed).shuffle(ids)
        return ids

    @app.get("/")
    def page(request: Request, cadenza_listener: str | None = Cookie(None)):
        listener = listener_of(cadenza_listener)
        fresh = listener is None
        listener = listener or secrets.token_urlsafe(16)
        done = votes.voted_pairs(engine, study.name, listener)
        remaining = [p for p in order_for(listener) if p not in done]
        context = {
            "num_done": len(done),
            "num_pairs": len(pairs),
            "seconds": study.manifest["clip_seconds"],
            "mime": study.manifest["mime"],
            "ask_human": study.manifest.get("ask_human", True),
            "csrf": csrf_signer.dumps(listener),
            "pair": pairs[remaining[0]] if remaining else None,
        }
        response = templates.TemplateResponse(request, "listen.html", context)
        response.headers["Cache-Control"] = "no-store"
        if fresh:
            response.set_cookie(
                COOKIE, listener_signer.dumps(listener), max_age=365 * 86400,
                httponly=True, samesite="lax",
            )  # fmt: skip
        return response

    @app.get("/clip/{clip_id}")
    def clip(clip_id: str):
        path = study.clip_path(clip_id)
        if path is None:
            raise HTTPException(404, "no such clip")
        return FileResponse(path, media_type=study.manifest["mime"], filename=None)

    @app.post("/vote")
    def vote(
        pair: str = Form(..., max_length=32),
        preferred: str = Form(..., max_length=32),
        human: str = Form("", max_length=32),
        csrf: str = Form(..., max_length=200),
        cadenza_listener: str | None = Cookie(None),
    ):
        listener = listener_of(cadenza_listener)
        if listener is None:
            raise HTTPException(403, "no listener cookie: open the listening page first")
        try:
            token_owner = csrf_signer.loads(csrf)
        except BadSignature:
            token_owner = None
        if token_owner != listener:
            raise HTTPException(403, "bad CSRF token: reload the listening page")
        found = pairs.get(pair)
        if found is None:
            raise HTTPException(404, "no such pair in this study")
        choices = (found["left"], found["right"])
        if preferred not in choices or human not in ("", *choices):
            raise HTTPException(400, "the chosen clip is not one of this pair's two clips")
        try:
            votes.add_vote(
                engine, study=study.name, pair_id=pair, listener=listener,
                left_clip=found["left"], right_clip=found["right"],
                preferred_clip=preferred, human_clip=human or None,
            )  # fmt: skip
        except votes.DuplicateVote:
            raise HTTPException(409, "you already voted on this pair") from None
        return RedirectResponse("/", status_code=303)

    @app.get("/admin/votes.csv")
    def export(token: str = ""):
        if not secrets.compare_digest(token, study.manifest["admin_token"]):
            raise HTTPException(403, "the admin token is wrong")
        rows = votes.all_votes(engine, study.name)
        return PlainTextResponse(votes.to_csv(rows, study.clips), media_type="text/csv")

    return app


def serve(study: Study, database_url: str, host: str, port: int) -> None:
    import uvicorn  # lazy: only `cadenza listen serve` runs a server

    uvicorn.run(create_app(study, database_url), host=host, port=port, log_level="warning")
