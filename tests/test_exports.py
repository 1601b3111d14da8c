"""Long downloads through the production server (gunicorn with the repo's gunicorn.conf.py, as `make run`
starts it): a slow reader gets the whole export, and a download that is cut is seen to be cut."""

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time

import factories
import pytest
from conftest import ROOT, clean_store, settings_env, stack_settings

ROWS = 200_000  # about 26 MB of CSV: more than loopback socket buffers hold
SLOW_SECONDS = 6  # the reader takes this long, past the server timeout each test sets (2 s)


@pytest.fixture(scope="module")
def big_job(database_url, redis_url, tiny_dataset, tmp_path_factory):
    """A finished prediction job with ROWS result rows, written as workers write them."""
    from service import predictions

    settings = stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("exports"))
    clean_store(database_url, redis_url)
    top5 = [{"label": "Apple", "class_id": 0, "confidence": 0.9}]
    with factories.store_session(database_url) as session:
        job = factories.job(session, status="succeeded")  # as its last shard would leave it
        for start in range(0, ROWS, 10_000):
            rows = [factories.result_row(f"/photos/{i:06d}.jpg", top5=top5) for i in range(start, start + 10_000)]
            predictions.add_predictions(session, job_id=job.id, rows=rows)
        job_id = str(job.id)
    return settings, job_id


@contextlib.contextmanager
def gunicorn(settings, *flags: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "gunicorn", "api:create_app()", "--bind", f"127.0.0.1:{port}", *flags]
    server = subprocess.Popen(command, cwd=ROOT, env=settings_env(settings), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    break
            time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def read_slowly(response, seconds: float) -> bytes:
    chunks, size = [], int(response.headers.get("X-Row-Count")) * 80 // max(1, int(seconds * 20))
    while chunk := response.read(max(4096, size)):
        chunks.append(chunk)
        time.sleep(0.05)
    return b"".join(chunks)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_slow_reader_gets_the_whole_export(big_job, fmt):
    settings, job_id = big_job
    # The repo's config (threaded workers), with gunicorn's timeout far below the download's length.
    with gunicorn(settings, "--workers", "1", "--timeout", "2") as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", f"/jobs/{job_id}/results?format={fmt}")
        response = connection.getresponse()
        assert response.status == 200 and response.headers["X-Row-Count"] == str(ROWS)
        started = time.monotonic()
        body = read_slowly(response, SLOW_SECONDS)
        assert time.monotonic() - started > 2  # it really outlasted the server's timeout
    lines = body.decode().splitlines()
    assert len(lines) == ROWS + (fmt == "csv")
    assert lines[-1].startswith("/photos/199999.jpg" if fmt == "csv" else '{"path": "/photos/199999.jpg"')


def test_the_client_says_when_a_download_was_cut(big_job):
    """Sync workers kill a response still streaming at their timeout: `grocery jobs results` exits 2 and
    says so, instead of leaving a file that looks complete."""
    settings, job_id = big_job
    # --threads 1: with threads, gunicorn would run its threaded worker whatever the class asked for.
    with gunicorn(settings, "--workers", "1", "--timeout", "2", "--worker-class", "sync", "--threads", "1") as port:
        env = {**os.environ, "GROCERY_URL": f"http://127.0.0.1:{port}"}
        command = [sys.executable, "-m", "cli", "jobs", "results", job_id, "--format", "csv"]
        client = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        received = 0
        while chunk := client.stdout.read(65536):  # a slow consumer: the client's pipe, then its socket, fill
            received += chunk.count(b"\n")
            time.sleep(0.05)
        assert client.wait(timeout=60) == 2
    assert received < ROWS and "cut short" in client.stderr.read().decode()


def test_a_cut_file_download_resumes_with_range(big_job):
    settings, job_id = big_job
    with gunicorn(settings, "--workers", "1") as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", f"/jobs/{job_id}/results/file?format=csv")
        whole = connection.getresponse()
        body = whole.read()
        assert whole.status == 200 and int(whole.headers["Content-Length"]) == len(body)
        assert whole.headers["X-Row-Count"] == str(ROWS) and body.count(b"\n") == ROWS + 1
        # A client cut after the first third asks for the rest, and gets exactly the rest.
        third = len(body) // 3
        connection.request("GET", f"/jobs/{job_id}/results/file?format=csv", headers={"Range": f"bytes={third}-"})
        rest = connection.getresponse()
        assert rest.status == 206 and rest.headers["Content-Range"] == f"bytes {third}-{len(body) - 1}/{len(body)}"
        assert body[:third] + rest.read() == body
        # The same rows as the stream, which goes on serving filtered sets and running jobs.
        connection.request("GET", f"/jobs/{job_id}/results?format=csv")
        assert connection.getresponse().read() == body


def test_events_come_a_page_at_a_time(app_for, big_job, database_url):
    from service import crud
    from service.db import make_engine, make_session_factory

    settings, job_id = big_job
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        for epoch in range(1, 6):
            crud.add_event(session, job_id=job_id, kind="epoch", data={"epoch": epoch})
        session.commit()
    engine.dispose()
    client = app_for(settings).test_client()
    first = client.get(f"/jobs/{job_id}/events?limit=4").get_json()
    rest = client.get(f"/jobs/{job_id}/events?limit=4&cursor={first['next_cursor']}").get_json()
    events = first["events"] + rest["events"]
    assert [e["data"].get("epoch") for e in events if e["kind"] == "epoch"] == [1, 2, 3, 4, 5]
    assert len(first["events"]) == 4 and len(rest["events"]) == 2 and rest["next_cursor"] is None  # and "queued"
