"""Actions (cancel, retry, trigger) and who may do them: a real server on
127.0.0.1, a real store, real HTTP with cookies as a browser keeps them."""

from __future__ import annotations

import pytest
import requests
from webapiutil import ApiServer, add_run, open_store

from ciwatch.model import RunState

TOKEN = "correct horse battery staple"
EVIL = "http://evil.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    yield s
    s.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def srv(store, clock):
    with ApiServer(store, token=TOKEN, clock=clock) as server:
        yield server


def queued(store) -> int:
    return add_run(store, "app", state=RunState.QUEUED).id


def signed_in(srv) -> requests.Session:
    browser = requests.Session()
    r = browser.post(srv.url + "/api/session", json={"token": TOKEN})
    assert r.status_code == 204, r.text
    return browser


def csrf(browser: requests.Session) -> dict:
    return {"X-CSRF-Token": browser.cookies["ciwatch_csrf"]}


def test_without_a_token_configured_everything_is_read_only(store):
    run_id = queued(store)
    with ApiServer(store, token=None) as srv:
        assert requests.get(srv.url + "/api/session").json() == {
            "actions": False,
            "signed_in": False,
        }
        for path, body in (
            (f"/api/runs/{run_id}/cancel", None),
            (f"/api/runs/{run_id}/retry", None),
            ("/api/trigger", {"repo": "app"}),
        ):
            r = requests.post(srv.url + path, json=body, headers={"Authorization": "Bearer x"})
            assert r.status_code == 403
            assert r.json() == {"detail": "read-only: no web token configured (web.token_file)"}
        r = requests.post(srv.url + "/api/session", json={"token": "anything"})
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        assert srv.actions.calls == []
    assert store.get_run(run_id).state is RunState.QUEUED


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "not-bearer"],
)
def test_a_missing_or_wrong_token_is_401(srv, store, headers):
    run_id = queued(store)
    r = requests.post(srv.url + f"/api/runs/{run_id}/cancel", headers=headers)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in r.text
    assert srv.actions.calls == [] and store.get_run(run_id).state is RunState.QUEUED


def test_the_bearer_token_works_for_every_action(srv, store):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    run_id = queued(store)
    r = requests.post(srv.url + f"/api/runs/{run_id}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["ok"] and r.json()["run"]["state"] == "canceled"
    assert store.get_run(run_id).state is RunState.CANCELED
    r = requests.post(srv.url + f"/api/runs/{run_id}/retry", headers=auth)
    assert r.status_code == 200 and r.json()["run"]["id"] != run_id
    r = requests.post(srv.url + "/api/trigger", json={"repo": "lib", "branch": "dev"}, headers=auth)
    assert r.status_code == 200 and r.json()["run"]["ref"] == "refs/heads/dev"
    assert [c[0] for c in srv.actions.calls] == ["cancel", "retry", "trigger"]
    r = requests.post(srv.url + f"/api/runs/{run_id}/cancel", headers=auth)
    assert r.status_code == 409 and "already finished (canceled)" in r.json()["detail"]


def test_a_session_sets_strict_cookies_and_needs_the_csrf_header(srv, store):
    r = requests.post(srv.url + "/api/session", json={"token": TOKEN})
    assert r.status_code == 204
    cookies = {c.split("=")[0]: c for c in r.raw.headers.getlist("Set-Cookie")}
    session, token = cookies["ciwatch_session"], cookies["ciwatch_csrf"]
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
    assert "HttpOnly" not in token and "SameSite=strict" in token
    assert TOKEN not in session + token

    browser = signed_in(srv)
    assert browser.get(srv.url + "/api/session").json() == {"actions": True, "signed_in": True}
    run_id = queued(store)
    r = browser.post(srv.url + f"/api/runs/{run_id}/cancel")  # cookies, no header
    assert (r.status_code, r.json()) == (403, {"detail": "cross-site request refused"})
    r = browser.post(srv.url + f"/api/runs/{run_id}/cancel", headers={"X-CSRF-Token": "guess"})
    assert r.status_code == 403
    assert store.get_run(run_id).state is RunState.QUEUED
    r = browser.post(srv.url + f"/api/runs/{run_id}/cancel", headers=csrf(browser))
    assert r.status_code == 200 and store.get_run(run_id).state is RunState.CANCELED


def test_sign_in_with_a_form_and_out_again(srv):
    browser = requests.Session()
    r = browser.post(srv.url + "/api/session", data={"token": "wrong"})
    assert r.status_code == 401 and not browser.cookies
    r = browser.post(srv.url + "/api/session", data={"token": TOKEN})
    assert r.status_code == 204 and "ciwatch_session" in browser.cookies
    r = browser.delete(srv.url + "/api/session")
    assert r.status_code == 204 and not browser.cookies
    assert browser.get(srv.url + "/api/session").json()["signed_in"] is False
    r = requests.post(srv.url + "/api/session", data=b"token", headers={"Content-Type": "text/x"})
    assert r.status_code == 415


@pytest.mark.parametrize(
    "where",
    [{"Origin": EVIL}, {"Origin": "null"}, {"Referer": EVIL + "/page"}],
    ids=["origin", "null-origin", "referer"],
)
def test_a_cross_site_form_post_is_refused_even_with_the_cookies(srv, store, where):
    """What a page on another site can make a browser send: a form POST with
    the cookies (were SameSite not honoured), without the header it cannot
    read, and its own Origin. Refused before anything is done."""
    browser = signed_in(srv)
    run_id = queued(store)
    r = browser.post(
        srv.url + f"/api/runs/{run_id}/cancel",
        data={"x": "1"},
        headers={**where, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (r.status_code, r.json()) == (403, {"detail": "cross-site request refused"})
    # Even a request carrying the header and the token is refused from another origin.
    r = browser.post(
        srv.url + f"/api/runs/{run_id}/cancel",
        headers={**where, **csrf(browser), "Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 403
    r = browser.post(srv.url + "/api/session", json={"token": TOKEN}, headers=where)
    assert r.status_code == 403
    assert srv.actions.calls == [] and store.get_run(run_id).state is RunState.QUEUED


def test_the_daemons_own_origin_and_public_url_are_accepted(store, clock):
    run_id, other = queued(store), queued(store)
    with ApiServer(store, token=TOKEN, clock=clock) as srv:
        browser = signed_in(srv)
        r = browser.post(
            srv.url + f"/api/runs/{run_id}/cancel", headers={"Origin": srv.url, **csrf(browser)}
        )
        assert r.status_code == 200, r.text
    with ApiServer(store, token=TOKEN, clock=clock, public_url="https://ci.example.org/") as srv:
        # Behind an https proxy the cookies are Secure: a browser sends them only there.
        r = requests.post(srv.url + "/api/session", json={"token": TOKEN})
        assert all("Secure" in c for c in r.raw.headers.getlist("Set-Cookie"))
        r = requests.post(
            srv.url + f"/api/runs/{other}/cancel",
            headers={"Origin": "https://ci.example.org", "Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200, r.text


def test_sessions_end_when_they_expire_or_the_token_changes(srv, store, clock):
    browser = signed_in(srv)
    assert browser.get(srv.url + "/api/session").json()["signed_in"]
    srv.token = "a new token"
    assert not browser.get(srv.url + "/api/session").json()["signed_in"]
    r = browser.post(srv.url + f"/api/runs/{queued(store)}/cancel", headers=csrf(browser))
    assert r.status_code == 401
    srv.token = TOKEN
    assert browser.get(srv.url + "/api/session").json()["signed_in"]
    clock.now += 31 * 24 * 3600
    assert not browser.get(srv.url + "/api/session").json()["signed_in"]


def test_a_forged_session_cookie_is_not_a_session(srv, store):
    browser = signed_in(srv)
    expires, nonce, mac = browser.cookies["ciwatch_session"].split(".")
    forged = f"{int(expires) + 10**6}.{nonce}.{mac}"
    browser.cookies.set("ciwatch_session", forged)
    assert not browser.get(srv.url + "/api/session").json()["signed_in"]
    r = browser.post(srv.url + f"/api/runs/{queued(store)}/cancel", headers=csrf(browser))
    assert r.status_code == 401
