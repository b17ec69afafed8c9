"""The governance review app: a night's duplicate groups, reviewers' decisions, calibration.

Server-rendered pages (Jinja2 templates with autoescape) over the report stage's review extracts
(``review.runs``) and the ``review_decisions`` store (``review.store``). Every listing field is
untrusted: templates escape it, images are re-encoded thumbnails or ``<img src>`` of allowed
``https`` hosts only, and a Content-Security-Policy forbids every script. Writes need a reviewer
identity (sign-in, or a header set by a trusted proxy) and the session's CSRF token.

    python -m review --config conf/sspr.toml     # http://127.0.0.1:8765
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from config.sections import PipelineConfig
from review.calibration import decided_pairs, record_suggestion, summarise_feedback
from review.runs import GroupFilter, RunNotFound, filter_groups, group_detail, list_runs, load_run
from review.store import DecisionStore
from schemas.images import thumbnail_jpeg
from schemas.uris import check_image_uri, local_image_path, renderable_image_src

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
_CSRF = "csrf"
_REVIEWER = "reviewer"


@dataclass(frozen=True)
class Refusal(Exception):
    """A request the app refuses, with the HTTP status and what to do."""

    status: int
    message: str


def read_secret(path: str | Path) -> str:
    """Returns the session-signing secret kept in ``path``, creating it (mode 0600) if missing."""
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch(mode=0o600)
        file.write_text(secrets.token_urlsafe(48), encoding="ascii")
    return file.read_text(encoding="ascii").strip()


def _number(value: str | None, cast: type) -> Any:
    if value is None or value.strip() == "":
        return None
    try:
        number = cast(value)
    except ValueError:
        raise Refusal(400, f"{value!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise Refusal(400, f"{value!r} is not a finite number")
    return number


def create_app(config: PipelineConfig) -> Starlette:
    """Builds the review app for a pipeline config (paths, thresholds and the ``[review]`` keys)."""
    settings = config.review
    reports_dir = config.paths.reports_dir
    store = DecisionStore(settings.decisions_db)
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True), auto_reload=False
    )
    current = {"dedup.min_similarity": config.dedup.min_similarity}
    if config.dedup.verifier:
        current["dedup.min_probability"] = config.dedup.min_probability
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src 'none'",
            "style-src 'self'",
            "img-src 'self' data: " + " ".join(f"https://{h.lstrip('.')}" for h in settings.image_src_hosts),
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )

    cached: dict[tuple, Any] = {}

    def feedback_for(target: float):
        # decisions change rarely and labelling all of them is the costly part of a page:
        # recompute only when the store or a night's extract changed
        stamps = tuple((d, _extract_stamp(reports_dir, d)) for d in list_runs(reports_dir))
        key = (store.revision(), stamps, target)
        if key not in cached:
            cached.clear()
            cached[key] = summarise_feedback(decided_pairs(reports_dir, store), target, current)
        return cached[key]

    def group_of(request: Request) -> tuple[Any, str, tuple]:
        run = load_run(reports_dir, request.path_params["run_date"])
        group_id = request.path_params["group_id"]
        try:
            return run, group_id, group_detail(run, group_id)
        except KeyError:
            raise Refusal(404, f"night {run.run_date} has no group {group_id!r}") from None

    def reviewer_of(request: Request) -> str:
        if settings.identity_header:
            return request.headers.get(settings.identity_header, "").strip()
        return str(request.session.get(_REVIEWER, "")).strip()

    def csrf_of(request: Request) -> str:
        if _CSRF not in request.session:
            request.session[_CSRF] = secrets.token_urlsafe(32)
        return request.session[_CSRF]

    async def checked_form(request: Request, *, need_reviewer: bool = True) -> tuple[Any, str]:
        form = await request.form()
        token = str(form.get("csrf_token", ""))
        expected = request.session.get(_CSRF, "")
        if not expected or not hmac.compare_digest(token.encode(), str(expected).encode()):
            raise Refusal(403, "The form's security token is missing or stale: reload the page and try again.")
        reviewer = reviewer_of(request)
        if need_reviewer and not reviewer:
            raise Refusal(403, "Decisions need a reviewer identity: sign in first.")
        return form, reviewer

    def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        body = templates.get_template(template).render(
            reviewer=reviewer_of(request),
            csrf_token=csrf_of(request),
            identity_header=settings.identity_header,
            runs=list_runs(reports_dir),
            **values,
        )
        return HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": csp})

    def refused(request: Request, refusal: Refusal) -> HTMLResponse:
        log.warning("refused %s %s: %s", request.method, request.url.path, refusal.message)
        return page(request, "refused.html", status=refusal.status, message=refusal.message)

    def guarded(handler):
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except Refusal as refusal:
                return refused(request, refusal)
            except RunNotFound as exc:
                return refused(request, Refusal(404, str(exc)))

        return wrapper

    def image_source(run_date: str, member: dict) -> str | None:
        # listing ids are untrusted: quoted into the path (the route takes any rest of it)
        own = f"/runs/{run_date}/images/{quote(member['listing_id'], safe='')}"
        if member.get("image") is not None:
            return own
        uri = member.get("image_uri") or ""
        if not uri:
            return None
        remote = renderable_image_src(uri, schemes=settings.image_src_schemes, hosts=settings.image_src_hosts)
        if remote:
            return remote
        v = config.validation
        if check_image_uri(uri, schemes=v.image_uri_schemes, roots=v.image_uri_roots, hosts=()) is None:
            return own
        return None

    @guarded
    async def index(request: Request) -> Response:
        dates = list_runs(reports_dir)
        if dates:
            return RedirectResponse(f"/runs/{dates[0]}", status_code=303)
        return page(request, "empty.html", reports_dir=reports_dir)

    @guarded
    async def run_view(request: Request) -> Response:
        run = load_run(reports_dir, request.path_params["run_date"])
        q = request.query_params
        wanted = GroupFilter(
            supplier=q.get("supplier", ""),
            category=q.get("category", ""),
            min_size=_number(q.get("min_size"), int),
            max_size=_number(q.get("max_size"), int),
            min_similarity=_number(q.get("min_similarity"), float),
            max_similarity=_number(q.get("max_similarity"), float),
            undecided_only=q.get("undecided") == "1",
        )
        whole = store.decided_versions()
        decided = {g for g, v in zip(run.groups["group_id"], run.groups["version"], strict=True) if (g, v) in whole}
        shown = filter_groups(run, wanted, decided)
        page_no = max(1, _number(q.get("page"), int) or 1)
        size = settings.page_size
        pages = max(1, math.ceil(len(shown) / size))
        page_no = min(page_no, pages)
        rows = shown.iloc[(page_no - 1) * size : page_no * size]
        decisions = store.for_groups(rows["group_id"])
        feedback = feedback_for(settings.target_precision)
        tonight = [e for e in feedback.by["run_date"] if e.key == run.run_date]
        params = {k: v for k, v in q.items() if k != "page" and v != ""}
        per_supplier = run.groups.groupby("supplier_id").agg(groups=("group_id", "size"), listings=("size", "sum"))
        stages = sorted(run.report.get("metrics", {}).items(), key=lambda kv: _stage_rank(kv[0]))
        return page(
            request,
            "run.html",
            run=run,
            stages=stages,
            groups=[
                g | {"decision": group_state(decisions.get(g["group_id"], []), g["version"])}
                for g in rows.to_dict("records")
            ],
            total=len(shown),
            page_no=page_no,
            pages=pages,
            link=lambda n: f"/runs/{run.run_date}?" + urlencode(params | {"page": n}),
            wanted=wanted,
            suppliers=sorted(run.groups["supplier_id"].unique()),
            categories=sorted(c for c in run.groups["category"].dropna().unique()),
            per_supplier=per_supplier.reset_index().to_dict("records"),
            histograms=[histogram_bars(h) for h in run.report.get("histograms", [])],
            precision_tonight=tonight[0] if tonight else None,
            precision_all=feedback.overall,
        )

    @guarded
    async def group_view(request: Request) -> Response:
        run, group_id, (group, members, pairs) = group_of(request)
        decisions = store.for_groups([group_id])[group_id]
        member_rows = [m | {"src": image_source(run.run_date, m)} for m in members.to_dict("records")]
        pair_rows = pairs.to_dict("records")
        # the group's weakest link is an edge of its tree; mark that pair (else the least similar)
        sims = [p["similarity_m"] for p in pair_rows]
        link = [s for s in sims if abs(s - group["weakest_similarity"]) < 1e-6]
        weakest = link[0] if link else (min(sims) if sims else None)
        return page(
            request,
            "group.html",
            run=run,
            group=group.to_dict(),
            members=member_rows,
            pairs=pair_rows,
            weakest=weakest,
            state=group_state(decisions, group["version"]),
            member_states=member_states(decisions, group["version"]),
            decisions=decisions,
        )

    @guarded
    async def decide(request: Request) -> Response:
        form, reviewer = await checked_form(request)
        run, group_id, (group, members, _) = group_of(request)
        try:
            decision = store.record(
                supplier_id=group["supplier_id"],
                group_id=group_id,
                members=list(members["listing_id"]),
                decision=str(form.get("decision", "")),
                reviewer=reviewer,
                run_date=run.run_date,
                listing_id=str(form.get("listing_id", "")),
            )
        except ValueError as exc:
            raise Refusal(400, str(exc)) from None
        log.info(
            "%s %s group %s%s (version %s)",
            reviewer,
            decision.decision,
            group_id,
            f" member {decision.listing_id}" if decision.listing_id else "",
            decision.group_version,
        )
        return RedirectResponse(f"/runs/{run.run_date}/groups/{group_id}", status_code=303)

    @guarded
    async def image(request: Request) -> Response:
        run = load_run(reports_dir, request.path_params["run_date"])
        rows = run.members[run.members["listing_id"] == request.path_params["listing_id"]]
        if rows.empty:
            raise Refusal(404, "no such listing in this night's groups")
        member = rows.iloc[0].to_dict()
        data = member.get("image")
        if data is None and member.get("image_uri"):
            v = config.validation
            uri = member["image_uri"]
            path = local_image_path(uri)
            allowed = check_image_uri(uri, schemes=v.image_uri_schemes, roots=v.image_uri_roots, hosts=()) is None
            if allowed and path and Path(path).is_file():
                data = Path(path).read_bytes()  # the checked, resolved path is the one read
        thumb = thumbnail_jpeg(bytes(data)) if data is not None else None
        if thumb is None:
            raise Refusal(404, "this listing has no displayable image")
        return Response(thumb, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @guarded
    async def calibration(request: Request) -> Response:
        target = _number(request.query_params.get("target"), float) or settings.target_precision
        if not 0 < target <= 1:
            raise Refusal(400, f"target precision {target} must be in (0, 1]")
        return page(
            request,
            "calibration.html",
            target=target,
            feedback=feedback_for(target),
            current=current,
            recorded=sorted(Path(settings.suggestions_dir).glob("*.json"), reverse=True)[:10]
            if Path(settings.suggestions_dir).is_dir()
            else [],
        )

    @guarded
    async def record(request: Request) -> Response:
        form, reviewer = await checked_form(request)
        target = _number(str(form.get("target", "")), float) or settings.target_precision
        key = str(form.get("config_key", ""))
        feedback = feedback_for(target)
        chosen = [s for s in feedback.suggestions if s.config_key == key]
        if not chosen:
            raise Refusal(400, f"there is no suggestion for {key!r} at target {target}")
        record_suggestion(settings.suggestions_dir, chosen[0], reviewer)
        return RedirectResponse(f"/calibration?target={target}", status_code=303)

    @guarded
    async def signin(request: Request) -> Response:
        if settings.identity_header:
            raise Refusal(400, f"reviewers are identified by the {settings.identity_header} header of the proxy")
        if request.method == "GET":
            return page(request, "signin.html", next=request.query_params.get("next", "/"))
        form, _ = await checked_form(request, need_reviewer=False)
        name = str(form.get("reviewer", "")).strip()
        if not name or len(name) > 80:
            raise Refusal(400, "give your name or e-mail (at most 80 characters) to sign in")
        request.session[_REVIEWER] = name
        request.session[_CSRF] = secrets.token_urlsafe(32)  # a new identity gets a new token
        nxt = str(form.get("next", "/"))
        return RedirectResponse(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/", status_code=303)

    @guarded
    async def signout(request: Request) -> Response:
        await checked_form(request, need_reviewer=False)
        request.session.clear()
        return RedirectResponse("/", status_code=303)

    routes = [
        Route("/", index),
        Route("/runs/{run_date}", run_view),
        Route("/runs/{run_date}/groups/{group_id}", group_view),
        Route("/runs/{run_date}/groups/{group_id}/decisions", decide, methods=["POST"]),
        Route("/runs/{run_date}/images/{listing_id:path}", image),
        Route("/calibration", calibration),
        Route("/calibration/suggestions", record, methods=["POST"]),
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/signout", signout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=read_secret(settings.secret_key_file),
            session_cookie="sspr_review",
            same_site="strict",
            https_only=False,
        )
    ]
    return Starlette(routes=routes, middleware=middleware)


def _extract_stamp(reports_dir: str, run_date: str) -> float:
    report = Path(reports_dir) / f"run_date={run_date}" / "report.json"
    return report.stat().st_mtime if report.exists() else 0.0


STAGE_ORDER = ("validate", "embed", "catalog", "pairs", "groups", "report")


def _stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def group_state(decisions: list, version: str) -> dict[str, Any] | None:
    """Returns the latest whole-group decision, flagged ``stale`` when made on another version."""
    whole = [d for d in decisions if d.listing_id == ""]
    if not whole:
        return None
    on_this = [d for d in whole if d.group_version == version]
    latest = on_this[0] if on_this else whole[0]  # decisions come newest first
    return {"decision": latest, "stale": not on_this}


def member_states(decisions: list, version: str) -> dict[str, Any]:
    """Returns listing id -> its latest per-member decision on this version."""
    out: dict[str, Any] = {}
    for d in decisions:
        if d.listing_id and d.group_version == version and d.listing_id not in out:
            out[d.listing_id] = d
    return out


def histogram_bars(histogram: dict, width: int = 600, height: int = 160) -> dict[str, Any]:
    """Lays out a report histogram as SVG bars, with the threshold's x position."""
    edges, counts = histogram["edges"], histogram["counts"]
    lo, hi = edges[0], edges[-1]
    top = max(counts) if counts and max(counts) > 0 else 1
    scale = lambda x: (x - lo) / (hi - lo) * width if hi > lo else 0.0
    bars = [
        {
            "x": round(scale(a), 1),
            "w": max(round(scale(b) - scale(a) - 1, 1), 0.5),
            "h": round(c / top * (height - 20), 1),
            "label": f"{a:.2f}–{b:.2f}: {c}",
        }
        for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]
    threshold = histogram.get("threshold")
    return histogram | {
        "bars": bars,
        "width": width,
        "height": height,
        "threshold_x": None if threshold is None else round(scale(min(max(threshold, lo), hi)), 1),
        "total": int(sum(counts)),
    }
