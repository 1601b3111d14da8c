"""Webhooks (a job's notify) end to end: the API, a real worker process whose courier delivers, and
real HTTP receivers on loopback (allowed explicitly here, as a deployment would allow its own)."""

import hashlib
import hmac
import io
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import factories
import pytest
from conftest import FINISHED, ROOT, clean_store, photos_dir, stack_settings, start_worker, stop_worker, wait_for
from sqlalchemy import create_engine, text

from service import crud, deliveries, tokens
from service.db import make_engine, make_session_factory, migrate
from service.kinds import TRAIN, NewJob
from service.states import DeliveryStatus

SERVICE_SECRET = "whsec_service-wide-test-secret"
TIMEOUT = 1.5  # each attempt's, in the worker
RETRY = 0.3  # the first retry's delay, doubling
HANG = "hang"  # an answer: none, for longer than the worker waits
NEVER = "never"  # an answer: none, until the test ends


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory):
    return stack_settings(
        database_url,
        redis_url,
        tiny_dataset,
        tmp_path_factory.mktemp("hooks"),
        # 127.0.0.2 is an allowed name whose address is not: refused at submission and at delivery.
        webhook_allowed_hosts=("127.0.0.1", "127.0.0.2"),
        webhook_allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
        webhook_secret=SERVICE_SECRET,
        webhook_timeout_seconds=TIMEOUT,
        webhook_retry_seconds=RETRY,
        webhook_retry_for_seconds=30.0,
    )


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory):
    """A clean store with a model, an empty folder to classify (its job fails, no images, as soon as a
    worker lists it) and one worker on the predict queue, whose courier delivers every job's webhooks."""
    clean_store(settings.database_url, settings.redis_url)
    factories.seed_model(settings.database_url, artifact=tmp_path_factory.mktemp("no-model"))
    (photos_dir(settings) / "empty").mkdir(parents=True, exist_ok=True)
    worker = start_worker("hooks@%h", ["predict"], settings)
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="module")
def store(database_url):
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@dataclass
class Request:
    arrived: float
    headers: dict
    body: bytes
    status_in_store: str | None  # the job's committed status when the request arrived


class Receiver:
    """An HTTP server on loopback that answers each POST as ``answers`` says (the last one repeats):
    a status code, ("redirect", url), HANG or NEVER; and keeps every request, with the job's status
    as committed in the store at the moment it arrived."""

    def __init__(self, store, answers, host: str = "127.0.0.1"):
        self.answers, self.requests, self.released = list(answers), [], threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(Request(time.time(), dict(self.headers), body, committed(store, body)))
                receiver.answer(self, receiver.answers.pop(0) if len(receiver.answers) > 1 else receiver.answers[0])

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_port}/hooks/grocery?team=produce"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler, answer) -> None:
        if answer in (HANG, NEVER):
            self.released.wait(TIMEOUT * 3 if answer == HANG else None)
        elif isinstance(answer, tuple):
            handler.send_response(302)
            handler.send_header("Location", answer[1])
            handler.end_headers()
        else:
            handler.send_response(answer)
            handler.end_headers()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def committed(store, body: bytes) -> str | None:
    with store.connect() as connection:
        job_id = json.loads(body)["id"]
        return connection.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()


@pytest.fixture
def receivers(store):
    made = []

    def make(*answers, host: str = "127.0.0.1") -> Receiver:
        made.append(Receiver(store, answers or (204,), host))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def verifies(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """What a receiver does: the HMAC-SHA256 of "<t>.<body>" under its secret, compared in constant
    time, and a recent t."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < tolerance


def wait_until(check, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not hold within {timeout}s")


def empty_folder_job(client, settings, notify: dict, headers: dict | None = None) -> str:
    """A prediction job on a folder without images: a worker lists it and it fails (no_images) at once."""
    body = {"type": "predict", "input": {"folder": str(photos_dir(settings) / "empty")}, "notify": notify}
    submitted = client.post("/jobs", json=body, headers=headers or {})
    assert submitted.status_code == 202, submitted.get_json()
    return submitted.get_json()["id"]


def deliveries_of(client, job_id: str, headers: dict | None = None) -> list[dict]:
    answer = client.get(f"/jobs/{job_id}/deliveries", headers=headers or {})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["deliveries"]


def logged(client, job_id: str, attempts: int) -> dict | None:
    """The job's delivery once it has recorded this many attempts."""
    found = deliveries_of(client, job_id)
    return found[0] if found and len(found[0]["log"]) >= attempts else None


def settled(client, job_id: str) -> dict | None:
    found = deliveries_of(client, job_id)
    return found[0] if found and found[0]["status"] != DeliveryStatus.PENDING else None


def test_a_jobs_end_is_posted_signed_after_it_is_committed(stack, client, settings, receivers):
    receiver = receivers(204)
    job_id = empty_folder_job(client, settings, {"url": receiver.url, "events": ["failed"]})
    job = wait_for(client, job_id, FINISHED, timeout=60)
    assert job["status"] == "failed" and job["notify"] == {"url": receiver.url, "events": ["failed"]}
    delivery = wait_until(lambda: settled(client, job_id), what="the delivery")
    assert delivery["status"] == "delivered" and delivery["event"] == "failed" and delivery["attempts"] == 1
    assert [(e["number"], e["outcome"], e["status_code"]) for e in delivery["log"]] == [(1, "delivered", 204)]

    [request] = receiver.requests
    assert request.status_in_store == "failed"  # the end was committed before the POST was made
    headers = request.headers
    assert headers["Grocery-Delivery"] == delivery["id"] and headers["Grocery-Event"] == "failed"
    assert headers["Content-Type"] == "application/json" and headers["Host"] == receiver.url.split("/")[2]
    # The body is the job's JSON, as GET /jobs/<id> shows it.
    assert json.loads(request.body) == client.get(f"/jobs/{job_id}").get_json()
    signature = headers["Grocery-Signature"]
    assert verifies(SERVICE_SECRET, signature, request.body)
    assert not verifies(SERVICE_SECRET, signature, request.body.replace(b'"failed"', b'"succeeded"'))
    assert not verifies("whsec_another", signature, request.body)


def test_an_end_the_notify_does_not_name_is_not_delivered(stack, client, settings, receivers):
    receiver = receivers(204)
    told = empty_folder_job(client, settings, {"url": receiver.url})  # every end, by default
    untold = empty_folder_job(client, settings, {"url": receiver.url, "events": ["succeeded", "cancelled"]})
    for job_id in (told, untold):
        assert wait_for(client, job_id, FINISHED, timeout=60)["status"] == "failed"
    wait_until(lambda: settled(client, told), what="the delivery")
    assert deliveries_of(client, untold) == []
    assert [json.loads(r.body)["id"] for r in receiver.requests] == [told]


def test_retried_after_a_500_and_a_timeout_with_one_delivery_id(stack, client, receivers):
    receiver = receivers(500, HANG, 200)
    # A queued training (no worker here serves training) cancelled: the API commits its end.
    submitted = client.post("/jobs", json={"type": "train", "notify": {"url": receiver.url}})
    job_id = submitted.get_json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    delivery = wait_until(lambda: settled(client, job_id), what="the delivery")
    assert delivery["status"] == "delivered" and delivery["event"] == "cancelled" and delivery["attempts"] == 3
    log = delivery["log"]
    assert [e["outcome"] for e in log] == ["http_error", "timeout", "delivered"]
    assert [e["status_code"] for e in log] == [500, None, 200]
    assert log[0]["error"] == "answered 500 Internal Server Error" and log[1]["seconds"] >= TIMEOUT - 0.1

    assert len(receiver.requests) == 3
    assert {r.headers["Grocery-Delivery"] for r in receiver.requests} == {delivery["id"]}
    assert [r.headers["Grocery-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert all(verifies(SERVICE_SECRET, r.headers["Grocery-Signature"], r.body) for r in receiver.requests)
    assert all(r.status_in_store == "cancelled" for r in receiver.requests)
    # Backoff: the second retry waits twice the first's delay, after the attempt that timed out.
    arrivals = [r.arrived for r in receiver.requests]
    assert arrivals[1] - arrivals[0] >= RETRY and arrivals[2] - arrivals[1] >= TIMEOUT + 2 * RETRY

    metrics = client.get("/metrics").get_data(as_text=True)
    for outcome in ("http_error", "timeout", "delivered"):
        assert metric(metrics, f'grocery_webhook_attempts_total{{outcome="{outcome}"}}') >= 1
    assert metric(metrics, 'grocery_webhook_deliveries{status="delivered"}') >= 1


def metric(exposition: str, name: str) -> float:
    [line] = [line for line in exposition.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def test_a_receiver_that_never_answers_does_not_delay_the_jobs_end(stack, client, settings, receivers):
    receiver = receivers(NEVER)
    job_id = empty_folder_job(client, settings, {"url": receiver.url})
    wait_until(lambda: receiver.requests, what="the first attempt")
    # The job had ended, committed, before its webhook was called, and it stays ended while the
    # receiver holds the request unanswered.
    assert receiver.requests[0].status_in_store == "failed"
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "failed"
    [delivery] = deliveries_of(client, job_id)
    assert delivery["status"] == "pending" and delivery["attempts"] >= 1
    # Each attempt ends at the timeout, and the next one carries the same delivery id.
    delivery = wait_until(lambda: logged(client, job_id, 2), what="two attempts")
    assert [e["outcome"] for e in delivery["log"][:2]] == ["timeout", "timeout"]
    assert {r.headers["Grocery-Delivery"] for r in receiver.requests} == {delivery["id"]}
    assert client.delete(f"/jobs/{job_id}").status_code == 204  # its delivery goes with it: no more attempts


def test_a_redirect_is_not_followed(stack, client, settings, receivers):
    inside = receivers(204, host="127.0.0.2")  # an address the service must not call
    receiver = receivers(("redirect", inside.url))
    job_id = empty_folder_job(client, settings, {"url": receiver.url})
    delivery = wait_until(lambda: logged(client, job_id, 2), what="two attempts")
    assert [e["outcome"] for e in delivery["log"][:2]] == ["redirect", "redirect"]
    assert delivery["log"][0]["status_code"] == 302 and "not followed" in delivery["last_error"]
    assert inside.url in delivery["last_error"]
    assert len(receiver.requests) >= 2 and inside.requests == []
    assert client.delete(f"/jobs/{job_id}").status_code == 204


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("http://10.0.0.7/hook", "url_not_allowed", "10.0.0.7, a loopback, link-local, private"),
        ("http://169.254.169.254/latest/meta-data/", "url_not_allowed", "169.254.169.254"),
        ("http://127.0.0.2:8000/hook", "url_not_allowed", "127.0.0.2"),
        ("http://[::1]:8000/hook", "url_not_allowed", "::1"),
        ("http://[::ffff:10.0.0.7]/hook", "url_not_allowed", "a loopback, link-local, private"),
        ("http://localhost:8000/hook", "url_not_allowed", "not one of GROCERY_WEBHOOK_ALLOWED_HOSTS"),
        ("http://example.com/hook", "url_not_allowed", "not one of GROCERY_WEBHOOK_ALLOWED_HOSTS"),
        ("http://hooks.invalid/hook", "url_not_allowed", "does not resolve"),
        ("ftp://127.0.0.1/hook", "invalid_parameter", "not an http or https URL"),
        ("http://user:secret@127.0.0.1/hook", "invalid_parameter", "no credentials"),
    ],
)
def test_a_url_to_a_private_address_is_refused(stack, make_app, url, code, says):
    hosts = ("127.0.0.1", "127.0.0.2", "10.0.0.7", "169.254.169.254", "::1", "::ffff:10.0.0.7", "hooks.invalid")
    client = make_app(webhook_allowed_hosts=hosts).test_client()
    refused = client.post("/jobs", json={"type": "train", "notify": {"url": url}})
    assert refused.status_code == 400, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == code and error["details"] == {"field": "notify.url"} and says in error["message"]
    # An allowed one is taken (the test could not tell a refusal from a broken submission otherwise).
    accepted = client.post("/jobs", json={"type": "train", "notify": {"url": "http://127.0.0.1:9/hook"}})
    assert accepted.status_code == 202 and accepted.get_json()["notify"]["url"] == "http://127.0.0.1:9/hook"


def test_an_upload_names_its_webhook_in_form_fields(stack, client):
    def upload(**fields):
        files = {"files": (io.BytesIO(factories.jpeg()), "a.jpg")}
        return client.post("/jobs", data={**files, **fields}, content_type="multipart/form-data")

    accepted = upload(notify_url="http://127.0.0.1:9/hook", notify_events="succeeded")
    assert accepted.status_code == 202, accepted.get_json()
    assert accepted.get_json()["notify"] == {"url": "http://127.0.0.1:9/hook", "events": ["succeeded"]}
    refused = upload(notify_url="http://10.0.0.7/hook")
    assert refused.status_code == 400 and refused.get_json()["error"]["details"] == {"field": "notify.url"}


def test_without_tokens_or_a_service_secret_a_notify_is_refused(stack, make_app):
    client = make_app(webhook_secret="").test_client()
    refused = client.post("/jobs", json={"type": "train", "notify": {"url": "http://127.0.0.1:9/hook"}})
    assert refused.status_code == 400 and refused.get_json()["error"]["details"] == {"field": "notify"}
    assert "GROCERY_WEBHOOK_SECRET" in refused.get_json()["error"]["message"]


def test_an_address_allowed_at_submission_is_checked_again_at_delivery(stack, make_app, settings, receivers):
    """The API allows the address 127.0.0.2 here and the worker does not, as if the name had resolved
    elsewhere by then: the worker refuses, once and for all, and the receiver is never called."""
    inside = receivers(204, host="127.0.0.2")
    client = make_app(webhook_allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)).test_client()
    job_id = empty_folder_job(client, settings, {"url": inside.url})
    delivery = wait_until(lambda: settled(client, job_id), what="the delivery")
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert [e["outcome"] for e in delivery["log"]] == ["refused"]
    assert "resolves to 127.0.0.2, a loopback, link-local, private" in delivery["last_error"]
    assert inside.requests == []


def test_a_tokens_jobs_are_signed_with_its_own_secret(stack, make_app, settings, receivers, database_url):
    with factories.store_session(database_url) as session:
        token, secret = tokens.create_token(session, name="team-hooks", scopes=factories.READ_WRITE)
        token_id, webhook_secret = token.id, token.webhook_secret
    assert webhook_secret.startswith("whsec_") and webhook_secret != SERVICE_SECRET
    client = make_app(auth="required").test_client()
    as_token = {"Authorization": f"Bearer {secret}"}
    receiver = receivers(204)
    job_id = empty_folder_job(client, settings, {"url": receiver.url}, headers=as_token)
    wait_until(lambda: receiver.requests, what="the delivery")
    [request] = receiver.requests
    assert verifies(webhook_secret, request.headers["Grocery-Signature"], request.body)
    assert not verifies(SERVICE_SECRET, request.headers["Grocery-Signature"], request.body)
    assert deliveries_of(client, job_id, headers=as_token)[0]["id"] == request.headers["Grocery-Delivery"]
    # The operator can print it again.
    env = {**os.environ, "DATABASE_URL": database_url}
    printed = subprocess.run(
        [sys.executable, "-m", "cli", "tokens", "webhook-secret", str(token_id)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0 and printed.stdout.strip() == webhook_secret


@pytest.fixture
def own_store(empty_database):
    """A store of this test's own: the stack's worker delivers from the module's, and would race it."""
    migrate(empty_database)
    engine = make_engine(empty_database)
    yield make_session_factory(engine)
    engine.dispose()


def test_a_delivery_is_given_up_once_its_retries_would_run_past_the_window(own_store):
    """The store's side alone: one delivery per end however often it is written, none for an end the
    notify does not name, and no attempt after GROCERY_WEBHOOK_RETRY_FOR."""
    with own_store() as session:
        notify = {"url": "http://127.0.0.1:9/", "events": ["cancelled"]}
        job = crud.create_job(session, new=NewJob(kind=TRAIN, params={}, owner_token_id=None, notify=notify))
        silent = crud.create_job(session, new=NewJob(kind=TRAIN, params={}, owner_token_id=None))
        for made in (job, silent):
            assert crud.request_cancel(session, job_id=made.id) == "cancelled"
        deliveries.add_deliveries(session, job_id=job.id, event="cancelled")  # again: still one
        deliveries.add_deliveries(session, job_id=job.id, event="failed")  # not named: none
        session.commit()
        [made] = deliveries.list_deliveries(session, job_id=job.id)
        assert deliveries.list_deliveries(session, job_id=silent.id) == []

        def claimed() -> list:
            found = deliveries.claim_due(session, limit=10, lease_seconds=60)
            session.commit()  # now() is the transaction's start: each look is a transaction of its own
            return found

        [due] = claimed()
        assert (due.id, due.attempt, due.url, due.secret) == (made.id, 1, notify["url"], None)
        assert claimed() == []  # leased to this attempt

        entry = {"number": 1, "outcome": "http_error", "error": "answered 500"}
        record = dict(delivery_id=due.id, attempt=1, entry=entry, delivered=False)
        assert deliveries.record_attempt(session, **record, retry_in=0.5, retry_for=3600) == "pending"
        session.commit()
        [due] = wait_until(claimed, 30, "the retry")
        assert due.attempt == 2
        stale = deliveries.record_attempt(session, **record, retry_in=0.5, retry_for=3600)
        assert stale is None  # an attempt that lost its lease records nothing
        record = {**record, "attempt": 2, "entry": {**entry, "number": 2}}
        assert deliveries.record_attempt(session, **record, retry_in=60, retry_for=30) == "failed"
        session.commit()
        [ended] = deliveries.list_deliveries(session, job_id=job.id)
        assert [e["number"] for e in ended.log] == [1, 2] and ended.finished_at is not None
        assert ended.last_error == "answered 500" and claimed() == []
