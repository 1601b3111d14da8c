"""A 1,000,000-row export read by a slow client (about 20,000 rows/s, a slow link), through gunicorn as
`make run` serves it, against the sync workers it had before, in one run.

For each: rows received against the X-Row-Count header, seconds, and how the download ended. Also the
file form (GET /jobs/<id>/results/file): cut after a third, resumed with Range, compared byte for byte.

    python benchmarks/bench_export.py [--rows 1000000] [--rows-per-second 20000]
"""

import argparse
import http.client
import json
import os
import shutil
import tempfile
import time

from harness import free_port, scratch_database, start_api

from service import crud, predictions
from service.db import make_engine, make_session_factory
from service.kinds import PREDICT, NewJob


def finished_job(database_url: str, rows: int) -> str:
    top5 = [{"label": f"Class{k}", "class_id": k, "confidence": 0.1} for k in range(5)]
    with make_session_factory(make_engine(database_url))() as session:
        job = crud.create_job(session, new=NewJob(kind=PREDICT, params={}, owner_token_id=None))
        for start in range(0, rows, 10_000):
            batch = [
                {
                    "path": f"/data/photos/{i // 1000:04d}/{i:07d}.jpg",
                    "label": "Apple",
                    "class_id": 0,
                    "confidence": 0.9,
                    "top5": top5,
                    "error_code": None,
                    "error_message": None,
                }
                for i in range(start, min(rows, start + 10_000))
            ]
            predictions.add_predictions(session, job_id=job.id, rows=batch)
            session.commit()
        job.status = "succeeded"
        session.commit()
        return str(job.id)


def slow_read(port: int, path: str, rows_per_second: float, headers: dict | None = None, stop_after: int = 0):
    """Read at most rows_per_second (a slow link); returns (status, expected rows, body, seconds, ending)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    expected = response.headers.get("X-Row-Count")
    chunks, rows, ending = [], 0, "complete"
    try:
        while chunk := response.read(16384):
            chunks.append(chunk)
            rows += chunk.count(b"\n")
            time.sleep(max(0.0, rows / rows_per_second - (time.perf_counter() - start)))
            if stop_after and sum(map(len, chunks)) >= stop_after:
                ending = "stopped by the client"
                break
    except (http.client.IncompleteRead, ConnectionError) as e:
        ending = f"cut: {type(e).__name__}"
    connection.close()
    return response.status, expected, b"".join(chunks), time.perf_counter() - start, ending


def report(label: str, expected, body: bytes, seconds: float, ending: str, header_lines: int) -> dict:
    received = body.count(b"\n") - header_lines
    print(f"{label:<44} {received:>9,} of {expected} rows in {seconds:6.1f} s ({ending})", flush=True)
    return {"received": received, "expected": int(expected) if expected else None, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-second", type=float, default=20_000)
    args = parser.parse_args()
    figures = {}
    with scratch_database() as database_url:
        start = time.perf_counter()
        job_id = finished_job(database_url, args.rows)
        print(f"{args.rows:,} result rows written in {time.perf_counter() - start:.0f} s", flush=True)
        exports_dir = tempfile.mkdtemp(prefix="grocery-exports-")
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "GROCERY_AUTH": "off",  # loopback only
            "GROCERY_UI": "off",
            "GROCERY_EXPORT_DIR": exports_dir,
        }
        exports = f"/jobs/{job_id}/results"
        servers = {
            "before: sync workers, timeout 30 s": ["--worker-class", "sync", "--threads", "1", "--timeout", "30"],
            "now: gunicorn.conf.py (gthread)": [],
        }
        for label, flags in servers.items():
            port = free_port()
            api = start_api({**env, "GUNICORN_CMD_ARGS": " ".join(flags)}, port, workers=1)
            try:
                for fmt in ("csv", "jsonl"):
                    status, expected, body, seconds, ending = slow_read(
                        port, f"{exports}?format={fmt}", args.rows_per_second
                    )
                    figures[f"{label} {fmt}"] = report(f"{label}, {fmt}", expected, body, seconds, ending, fmt == "csv")
            finally:
                api.terminate()
                api.wait()
        port = free_port()
        api = start_api(env, port, workers=1)
        try:
            file_path = f"{exports}/file?format=csv"
            start = time.perf_counter()
            status, expected, whole, _, _ = slow_read(port, file_path, args.rows_per_second * 50)
            print(f"file, first request (written, then sent): {time.perf_counter() - start:.1f} s", flush=True)
            status, _, head, _, ending = slow_read(port, file_path, args.rows_per_second, stop_after=len(whole) // 3)
            status, _, tail, seconds, _ = slow_read(
                port, file_path, args.rows_per_second, headers={"Range": f"bytes={len(head)}-"}
            )
            same = head + tail == whole
            print(
                f"file: {len(whole):,} bytes; cut after {len(head):,}, resumed with Range (status {status}): "
                f"{'identical' if same else 'DIFFERENT'}",
                flush=True,
            )
            figures["file"] = {"bytes": len(whole), "resumed_status": status, "identical": same}
        finally:
            api.terminate()
            api.wait()
            shutil.rmtree(exports_dir, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
