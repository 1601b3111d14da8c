"""`grocery jobs` and `grocery models`: the job service from a terminal, over HTTP.

GROCERY_URL (default http://127.0.0.1:8000) and GROCERY_TOKEN say where and who. Exit codes: 0 the
job succeeded (or the command did its work), 1 the job failed, 3 it was cancelled, 2 the API refused
the request or could not be reached (its error message is printed).
"""

import argparse
import csv
import http.client
import io
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from grocery.config import SERVICE_PARAMS
from service.contract import ROW_COUNT_HEADER
from service.kinds import JOB_TYPES, KINDS, PREDICT, TRAIN
from service.states import FINISHED_STATUSES, Status

# How a watched job ended (each of FINISHED_STATUSES), as the exit code.
EXIT = {Status.SUCCEEDED: 0, Status.FAILED: 1, Status.CANCELLED: 3}


class APIError(Exception):
    pass


class Client:
    def __init__(self, url: str, token: str | None):
        self.url, self.token = url.rstrip("/"), token

    def call(self, method: str, path: str, body: dict | None = None, *, data: bytes | None = None, content_type=None):
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        with self.open(method, path, data=data, content_type=content_type) as response:
            raw = response.read()
            return json.loads(raw) if response.headers.get_content_type() == "application/json" else raw

    def open(self, method: str, path: str, *, data: bytes | None = None, content_type=None, timeout: float = 60):
        """The response, to read as it arrives; an API error or an unreachable API is an APIError."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            try:
                error = json.loads(e.read())["error"]
                raise APIError(f"{e.code} {error['code']}: {error['message']}") from None
            except (ValueError, KeyError):
                raise APIError(f"{e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise APIError(f"cannot reach {self.url}: {e.reason} (set GROCERY_URL)") from None

    def upload(self, path: str, fields: dict[str, str], files: list[Path]) -> dict:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for file in files:
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            field = "archive" if file.suffix.lower() == ".zip" else "files"
            header = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{file.name}"\r\n'
            parts.append(f"{header}Content-Type: {kind}\r\n\r\n".encode() + file.read_bytes() + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.call("POST", path, data=data, content_type=f"multipart/form-data; boundary={boundary}")


def watch(client: Client, job_id: str, poll: float = 1.0) -> int:
    """A progress bar until the job ends; the exit code says how it ended."""
    from tqdm import tqdm

    job = client.call("GET", f"/jobs/{job_id}")
    with tqdm(desc=f"{job['type']} {job_id[:8]}", unit=job["progress"]["unit"], disable=None) as bar:
        while True:
            progress = job["progress"]
            bar.total = progress["total"]
            bar.n = progress["done"] or 0
            bar.set_postfix_str(job["status"])
            if job["status"] in FINISHED_STATUSES:
                break
            time.sleep(poll)
            job = client.call("GET", f"/jobs/{job_id}")
    ending = job["status"] + (f": {job['error']['code']}: {job['error']['message']}" if job["error"] else "")
    print(f"job {job_id} {ending}", file=sys.stderr)
    if job["result"]:
        print(summary_line(job))
    return EXIT[job["status"]]


def summary_line(job: dict) -> str:
    """One line on what a finished job gave: its model and scores, or its files and where they are."""
    result = job["result"]
    if "model_id" in result:
        metrics = result.get("metrics") or {}
        scores = ", ".join(f"{name} {metrics[key]:.2%}" for key, name in SCORES if metrics.get(key) is not None)
        return f"model {result['model_id']} (version {result['model_version']}){': ' + scores if scores else ''}"
    if "total" in result:
        return (
            f"{result['total']} files: {result['succeeded']} classified, {result['failed']} failed; "
            f"results: {result['results']}"
        )
    return json.dumps({k: v for k, v in result.items() if k != "settings"})


SCORES = (("val_top1", "val top-1"), ("val_top5", "val top-5"), ("val_fine_top1", "val fine top-1"))


def submit(client: Client, args) -> int:
    if args.kind == TRAIN.name:
        params = {p.name: getattr(args, p.name) for p in SERVICE_PARAMS if getattr(args, p.name) is not None}
        then = {"then": json.loads(args.then)} if args.then else {}
        job = client.call("POST", "/jobs", {"type": TRAIN.name, "params": params, **then})
    elif args.kind == PREDICT.name and (args.folder or args.url):
        source = {"folder": args.folder} if args.folder else {"url": args.url}
        job = client.call("POST", "/jobs", {"type": PREDICT.name, "model": args.model, "input": source})
    elif args.kind != PREDICT.name:
        job = client.call("POST", "/jobs", {**json.loads(args.request), "type": args.kind})
    elif args.files:
        job = client.upload("/jobs", {"model": args.model}, [Path(f) for f in args.files])
    else:
        raise APIError("give --folder (on the server's storage), --url (a bucket prefix) or files to upload")
    print(job["id"])
    return watch(client, job["id"]) if args.watch else 0


def results(client: Client, args) -> int:
    """Stream the export to stdout (Parquet: to --output) and check it arrived whole: the API says its
    row count up front."""
    if args.format == "parquet" and not args.output:
        raise APIError("--format parquet needs --output FILE (a Parquet file is not a stream)")
    with client.open("GET", f"/jobs/{args.job_id}/results?format={args.format}", timeout=300) as response:
        expected = response.headers.get(ROW_COUNT_HEADER)
        try:
            if args.format == "parquet":
                received = parquet_rows(response, Path(args.output))
            elif args.output:
                with open(args.output, "w", encoding="utf-8", newline="") as out:
                    received = copy_counting_rows(response, args.format, out)
            else:
                received = copy_counting_rows(response, args.format, sys.stdout)
        except BrokenPipeError:
            raise
        except (http.client.IncompleteRead, OSError) as e:
            raise APIError(f"the download was cut short ({e}); run it again") from None
    if expected is not None and received != int(expected):
        raise APIError(f"the download was cut short: {received} of {expected} rows arrived; run it again")
    return 0


def parquet_rows(response, path: Path) -> int:
    """Save the body at ``path``; returns the rows its footer says it holds (a cut file has no footer)."""
    import shutil

    import pyarrow.parquet as pq

    with path.open("wb") as out:
        shutil.copyfileobj(response, out)
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow.ArrowInvalid: no footer, the download was cut
        raise OSError(f"{path} is not a whole Parquet file: {e}") from None


def copy_counting_rows(response, fmt: str, out) -> int:
    """Copy the body to ``out`` as it arrives; returns its records (a CSV field may hold a newline)."""
    lines = _copied(io.TextIOWrapper(response, encoding="utf-8", newline=""), out)
    if fmt == "csv":
        return max(0, sum(1 for _ in csv.reader(lines)) - 1)  # less the header row
    return sum(1 for line in lines if line.strip())


def _copied(lines, out):
    for line in lines:
        out.write(line)
        yield line


def list_jobs(client: Client, args) -> int:
    query = "&".join(f"{k}={v}" for k, v in (("type", args.type), ("status", args.status)) if v)
    jobs = client.call("GET", f"/jobs?limit={args.limit}&{query}")["jobs"]
    if not jobs:
        print("no jobs" + (" of that type or status" if query else " yet: grocery jobs submit --help"), file=sys.stderr)
    for job in jobs:
        progress = job["progress"]
        print(f"{job['id']}  {job['type']:<7} {job['status']:<9} {progress['done']}/{progress['total'] or '?'}")
    return 0


def cancel(client: Client, args) -> int:
    job = client.call("POST", f"/jobs/{args.job_id}/cancel")
    print(f"job {job['id']} {job['status']}")
    return 0


def models(client: Client, args) -> int:
    if args.action == "alias":
        model = client.call("PUT", f"/models/aliases/{args.name}", {"model_id": args.model_id})
        print(f"{args.name} -> {model['id']} (version {model['version']})")
        return 0
    registered = client.call("GET", "/models")["models"]
    if not registered:
        print("no models yet: train one with `grocery jobs submit train --watch`", file=sys.stderr)
    for model in registered:
        top1 = model["metrics"].get("val_top1")
        score = f"val top-1 {top1:.2%}" if top1 is not None else ""
        print(f"{model['id']}  v{model['version']:<4} {model['arch']:<20} {','.join(model['aliases']):<12} {score}")
    return 0


def train_options(command) -> None:
    # Every parameter the service offers; it checks bounds and choices, and says what it refused.
    for p in SERVICE_PARAMS:
        default = "the service's dataset" if p.name == "data_dir" else p.default
        about = f"{p.service_help or p.help or p.name.replace('_', ' ')} (default: {default})"
        command.add_argument(p.flag, dest=p.name, type=p.kind, choices=p.choices, help=about)
    command.add_argument(
        "--then",
        help='what follows if it succeeds, as JSON: {"evaluate": {"index": {"split": "val"}}, "promote": "production", '
        '"gate": {"min_top1": 0.9, "not_worse_than": "production"}} (docs/api.md, "Chains")',
    )


def predict_options(command) -> None:
    command.add_argument("--model", default="latest", help="a model id, 'latest' or an alias (default: latest)")
    command.add_argument("--folder", help="a folder the server may read (GROCERY_INPUT_ROOTS)")
    command.add_argument("--url", help="an object prefix the server may read, s3://bucket/prefix/")
    command.add_argument("files", nargs="*", help="image files or one .zip to upload")


def request_options(command) -> None:
    command.add_argument("--request", default="{}", help="the job's request as JSON, without its type")


# A kind's own flags; any other registered kind takes its request as JSON.
SUBMIT_OPTIONS = {TRAIN.name: train_options, PREDICT.name: predict_options}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grocery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    groups = parser.add_subparsers(dest="group", required=True)
    jobs = groups.add_parser("jobs", help="submit, watch, list and cancel jobs; fetch results").add_subparsers(
        dest="command", required=True
    )
    submitting = jobs.add_parser("submit", help="submit a job").add_subparsers(dest="kind", required=True)
    for kind in KINDS.values():
        command = submitting.add_parser(kind.name, help=kind.help)
        SUBMIT_OPTIONS.get(kind.name, request_options)(command)
        command.add_argument("--watch", action="store_true", help="follow it to the end; exit code says how it ended")
        command.set_defaults(run=submit)
    watching = jobs.add_parser("watch", help="a progress bar until the job ends")
    watching.add_argument("job_id", help="the job's id")
    watching.set_defaults(run=lambda client, args: watch(client, args.job_id))
    listing = jobs.add_parser("list", help="newest first")
    listing.add_argument("--type", choices=JOB_TYPES, help="only jobs of this type (default: all)")
    listing.add_argument("--status", choices=[str(s) for s in Status], help="only jobs in this status (default: all)")
    listing.add_argument("--limit", type=int, default=20, help="at most this many, newest first (default: 20)")
    listing.set_defaults(run=list_jobs)
    cancelling = jobs.add_parser("cancel", help="cancel a queued or running job")
    cancelling.add_argument("job_id", help="the job's id")
    cancelling.set_defaults(run=cancel)
    fetching = jobs.add_parser("results", help="a prediction job's results, whole, to stdout or a file")
    fetching.add_argument("job_id", help="the prediction job's id")
    fetching.add_argument(
        "--format", choices=["csv", "jsonl", "parquet"], default="jsonl", help="the file format (default: jsonl)"
    )
    fetching.add_argument("--output", help="a file to write (needed for parquet; default: stdout)")
    fetching.set_defaults(run=results)
    registry_command = groups.add_parser("models", help="the model registry (alone: the list)")
    registry_command.set_defaults(run=models, action="list")
    registry = registry_command.add_subparsers(dest="action")
    registry.add_parser("list", help="models, newest first").set_defaults(run=models)
    alias = registry.add_parser("alias", help="point an alias (e.g. production) at a model")
    alias.add_argument("name", help="the alias, e.g. production")
    alias.add_argument("model_id", help="the model's id")
    alias.set_defaults(run=models)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    url = os.environ.get("GROCERY_URL", DEFAULT_URL)
    if not url.strip():
        print(
            f"grocery: GROCERY_URL is set but empty: unset it (for {DEFAULT_URL}) or give the service's URL",
            file=sys.stderr,
        )
        return 2
    client = Client(url.strip(), os.environ.get("GROCERY_TOKEN"))
    try:
        return args.run(client, args)
    except APIError as e:
        print(f"grocery: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`... | head`): what it wanted arrived. Quiet, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


DEFAULT_URL = "http://127.0.0.1:8000"
