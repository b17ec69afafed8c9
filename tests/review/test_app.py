"""The review app over HTTP (Starlette's test client): pages, filters, decisions, refusals."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.review.conftest import HOSTILE_TITLE, RUN_DATE, write_night

pytest.importorskip("starlette")


@pytest.fixture
def client(review_config):
    from starlette.testclient import TestClient

    from review.app import create_app

    with TestClient(create_app(review_config), base_url="http://127.0.0.1") as c:
        yield c


def token_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def sign_in(client, name: str = "ana@example.com") -> str:
    token = token_of(client.get("/signin").text)
    response = client.post("/signin", data={"reviewer": name, "csrf_token": token, "next": "/"}, follow_redirects=True)
    assert response.status_code == 200 and name in response.text
    return token_of(response.text)


def test_index_goes_to_the_latest_night_and_shows_overview(client):
    response = client.get("/")
    assert response.status_code == 200
    assert str(response.url).endswith(f"/runs/{RUN_DATE}")
    page = response.text
    assert "3 groups" in page
    assert 'id="stages"' in page and "validate" in page
    assert "<svg" in page and 'class="threshold"' in page  # the histogram with its threshold line
    assert "script-src 'none'" in response.headers["content-security-policy"]


def test_filters_narrow_the_group_list(client):
    assert "1 groups" in client.get(f"/runs/{RUN_DATE}", params={"supplier": "s-fruit"}).text
    assert "2 groups" in client.get(f"/runs/{RUN_DATE}", params={"category": "Milk"}).text
    assert "1 groups" in client.get(f"/runs/{RUN_DATE}", params={"min_size": "3"}).text
    page = client.get(f"/runs/{RUN_DATE}", params={"min_similarity": "0.5", "max_similarity": "0.7"}).text
    assert "1 groups" in page and "g-milk" in page and "g-juice" not in page
    assert client.get(f"/runs/{RUN_DATE}", params={"min_size": "abc"}).status_code == 400


def test_group_page_escapes_listing_fields_and_drops_unsafe_images(client):
    page = client.get(f"/runs/{RUN_DATE}/groups/g-evil").text
    assert HOSTILE_TITLE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;brand&lt;/b&gt;" in page
    assert "javascript:" not in page and "data:text/html" not in page
    # e2 has bytes that are no image: the page links the thumbnail route, which refuses it
    assert client.get(f"/runs/{RUN_DATE}/images/e2").status_code == 404


def test_thumbnails_are_reencoded_jpegs(client):
    response = client.get(f"/runs/{RUN_DATE}/images/m1")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content[:2] == b"\xff\xd8"


def test_group_page_shows_scores_weakest_link_and_bridge(client):
    page = client.get(f"/runs/{RUN_DATE}/groups/g-milk").text
    assert 'class="weakest"' in page and "0.620" in page  # m2 ↔ m3 is the weakest link
    assert "0.970" in page and "0.900" in page and "0.910" in page  # t, i and the match probability
    assert 'id="bridge-flag"' in page


def test_a_write_without_identity_or_token_is_refused(client, review_config):
    from review.store import DecisionStore

    url = f"/runs/{RUN_DATE}/groups/g-milk/decisions"
    token = token_of(client.get("/signin").text)  # a real session token, but no identity yet
    assert client.post(url, data={"decision": "confirm", "csrf_token": token}).status_code == 403  # no identity
    sign_in(client)
    assert client.post(url, data={"decision": "confirm"}).status_code == 403  # no token
    assert client.post(url, data={"decision": "confirm", "csrf_token": "forged"}).status_code == 403
    assert DecisionStore(review_config.review.decisions_db).frame().empty


def test_decisions_are_stored_idempotently_and_shown(client, review_config):
    token = sign_in(client)
    url = f"/runs/{RUN_DATE}/groups/g-milk/decisions"
    for _ in range(2):
        page = client.post(url, data={"decision": "confirm", "csrf_token": token}, follow_redirects=True).text
    assert "confirmed by ana@example.com" in page
    client.post(url, data={"decision": "reject", "listing_id": "m3", "csrf_token": token})
    rows = (
        sqlite3.connect(review_config.review.decisions_db)
        .execute("SELECT group_id, listing_id, decision, reviewer, run_date FROM review_decisions ORDER BY listing_id")
        .fetchall()
    )
    assert rows == [
        ("g-milk", "", "confirm", "ana@example.com", RUN_DATE),
        ("g-milk", "m3", "reject", "ana@example.com", RUN_DATE),
    ]
    assert "not a duplicate" in client.get(f"/runs/{RUN_DATE}/groups/g-milk").text
    # a listing that is no member is refused, not stored
    assert client.post(url, data={"decision": "reject", "listing_id": "j1", "csrf_token": token}).status_code == 400
    listing = client.get(f"/runs/{RUN_DATE}", params={"undecided": "1"}).text
    assert "2 groups" in listing and "g-milk" not in listing


def test_a_group_that_changed_shows_the_decision_was_on_an_earlier_version(client, review_config):
    token = sign_in(client)
    client.post(f"/runs/{RUN_DATE}/groups/g-milk/decisions", data={"decision": "confirm", "csrf_token": token})
    write_night(Path(review_config.paths.reports_dir), "2024-03-03", extra_member=True)
    page = client.get("/runs/2024-03-03/groups/g-milk").text
    assert 'id="stale-notice"' in page and "3 members on night 2024-03-02" in page
    assert "g-milk" in client.get("/runs/2024-03-03", params={"undecided": "1"}).text


def test_calibration_page_estimates_precision_and_records_a_suggestion(client, review_config):
    token = sign_in(client)
    assert "no decided pairs yet" in client.get("/calibration", params={"target": "1.0"}).text  # cached now
    base = f"/runs/{RUN_DATE}/groups"
    client.post(f"{base}/g-milk/decisions", data={"decision": "confirm", "csrf_token": token})
    client.post(f"{base}/g-juice/decisions", data={"decision": "confirm", "csrf_token": token})
    client.post(f"{base}/g-evil/decisions", data={"decision": "reject", "csrf_token": token})
    # decided pairs: m1-m2 0.95, m2-m3 0.62, j1-j2 0.88 matches; e1-e2 0.45 not: precision 3/4
    page = client.get("/calibration", params={"target": "1.0"}).text
    assert "3 of 4 decided pairs" in page
    # the lowest similarity_m with precision 1.0 is 0.62 (above the current 0.3113)
    assert re.search(r'class="suggested">0\.6200<', page)
    assert "min_similarity_source" in page
    assert "Only 4 decided pairs" in page  # too few to trust, and the page says so
    response = client.post(
        "/calibration/suggestions",
        data={"target": "1.0", "config_key": "dedup.min_similarity", "csrf_token": token_of(page)},
        follow_redirects=True,
    )
    assert response.status_code == 200
    [recorded] = list(Path(review_config.review.suggestions_dir).glob("*.json"))
    record = json.loads(recorded.read_text())
    assert record["threshold"] == pytest.approx(0.62) and record["recorded_by"] == "ana@example.com"
    assert "reviewer-decided pairs" in record["source"]


def test_an_unknown_night_says_what_to_do(client):
    response = client.get("/runs/2030-01-01")
    assert response.status_code == 404 and "run the report stage" in response.text
