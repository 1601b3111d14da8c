"""Bulk prediction: a job's listing task fans its files out as shard tasks on the predict queue.

run_predict_job lists the input (streaming) into shards recorded in PostgreSQL and enqueues
each; run_predict_shard classifies one shard's files and writes their rows. Progress is summed
over the shards in SQL; the last to finish, listing or shard, ends the job (service/shards.py).
"""

import functools
import itertools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from celery.signals import worker_ready

from grocery.results import Prediction
from grocery.storage import StorageError
from service import artifacts, confinement, crud, exports, shards, tokens
from service.confinement import ReadScope, job_scope
from service.contract import JOB_TASKS, SHARD_TASK, send, serving_model
from service.settings import Settings
from service.tables import Job, JobShard, Model
from worker.celery_app import app
from worker.runtime import (
    JobError,
    announce_end,
    device_name,
    error_code,
    hard_time_limit,
    presence,
    sessions,
    start,
    worker_name,
    worker_settings,
)

log = logging.getLogger(__name__)
# An input smaller than SPREAD full shards is cut into SPREAD smaller ones (of at least
# MIN_SHARD files), so that a few thousand images still keep every worker busy to the end.
SPREAD, MIN_SHARD = 8, 64


@app.task(name=JOB_TASKS["predict"].name, bind=True)
def run_predict_job(self, job_id: str) -> None:
    with sessions()() as session:
        job = crud.get_job(session, job_id=uuid.UUID(job_id))
    if job is not None and job.lane == "interactive":
        run_interactive(self, [job_id, *interactive_companions(job_id)])
    else:
        predict_job(self, job_id)


def predict_job(task, job_id: str) -> None:
    """List the job's input into shards; a job of one shard runs it right here."""
    single = list_job(task, job_id)
    if single is not None:
        run_shard(task, single)


def list_job(task, job_id: str) -> int | None:
    """Claim the job and list it into shards, sending them; returns the shard of a job of one shard,
    left for the caller to run here: a single image does not pay for a second trip through the queue."""
    started = start(task, job_id)
    if started is None:
        return None
    reporter, job = started
    try:
        outcome, single = list_into_shards(job, reporter.attempt, worker_settings())
    except Exception as e:
        log.exception("listing prediction job %s failed", job_id)
        reporter.finish("failed", error_code=error_code(e), error_message=f"listing the input failed: {e}")
        return None
    if outcome == "too_many_files":
        reporter.finish(
            "failed",
            error_code="too_many_files",
            error_message=f"the input holds more than {worker_settings().max_job_files} files (GROCERY_MAX_JOB_FILES)",
        )
    elif outcome == "too_many_shards":
        reporter.finish(
            "failed",
            error_code="too_many_shards",
            error_message=f"the input needs more than {worker_settings().max_job_shards} shards of "
            f"{job.params.get('shard_size')} files (GROCERY_MAX_JOB_SHARDS): give a larger shard_size",
        )
    return single


def list_into_shards(job, attempt: int, settings: Settings) -> tuple[str, int | None]:
    """Stream the input's files into shards, enqueuing each as it is recorded, but for a job of one
    shard: that shard's id is returned, to run at once."""
    files = input_files(job, settings)
    listed, numbers, held = 0, 0, None
    # Default shards grow with the input so that even the largest job stays within max_job_shards.
    default_size = max(settings.shard_size, -(-settings.max_job_files // settings.max_job_shards))
    for number, paths in enumerate(shard_chunks(files, job.params.get("shard_size"), default_size)):
        listed += len(paths)
        if listed > settings.max_job_files:
            return "too_many_files", None
        if number >= settings.max_job_shards:
            return "too_many_shards", None
        with sessions()() as session:
            shard_id = shards.add_shard(session, job_id=job.id, number=number, paths=paths)
            stop = shards.note_listing(session, job_id=job.id, attempt=attempt, listed=listed)
            session.commit()
        numbers = number + 1
        if held is not None:
            send_shard(held)
        held = shard_id  # None when an earlier listing attempt recorded this shard already
        if stop:
            break
    with sessions()() as session:
        shards.note_listing(session, job_id=job.id, attempt=attempt, listed=listed, shards_total=numbers)
        session.commit()
    single = held if numbers == 1 else None
    if held is not None and single is None:
        send_shard(held)
    end_job_if_done(job.id)  # a job without files ends here
    return "listed", single


def shard_chunks(files: Iterator[str], size: int | None, default: int) -> Iterator[list[str]]:
    """The job's shard_size as given; else ``default``-file shards, or smaller ones for small inputs.
    Reads ahead at most SPREAD shards' worth, so listing still streams."""
    from grocery.listing import chunked

    if size:
        yield from chunked(files, size)
        return
    head = list(itertools.islice(files, default * SPREAD))
    if len(head) < default * SPREAD:
        yield from chunked(head, max(MIN_SHARD, -(-len(head) // SPREAD)))
        return
    yield from chunked(itertools.chain(head, files), default)


def input_files(job, settings: Settings) -> Iterator[str]:
    from grocery import storage
    from grocery.listing import name_matcher, walk_files

    source = job.params["input"]
    if "paths" in source:
        return iter(source["paths"])
    hidden = confinement.others_uploads(settings, job_id=job.id)
    if "url" in source:
        matches = name_matcher(source.get("pattern"))
        listed = storage.list_objects(source["url"], recursive=source.get("recursive", True), matches=matches)
        return (url for url in listed if not hidden(url))
    # The walk enters no symlinked folder, so a path's folders are as real as the job's folder.
    folder = Path(source["folder"])
    files = walk_files(folder, recursive=source.get("recursive", True), pattern=source.get("pattern"))
    return (path for path in files if not hidden(Path(path)))


def send_shard(shard_id: int, countdown: float | None = None) -> None:
    send(app, SHARD_TASK, shard_id, countdown=countdown)


@app.task(name=SHARD_TASK.name, bind=True)
def run_predict_shard(self, shard_id: int) -> None:
    """A message per queued shard: its shard is dropped if its job stopped; else this worker runs the
    fairest queued shard (shards.next_shard), this one or another job's, so jobs share the workers."""
    run_shard(self, shard_id, fair=True)


def claim_for_run(task, shard_id: int, *, fair: bool = False) -> tuple[JobShard, Job, Model, ReadScope] | None:
    """Claim the shard (or, ``fair``, the fairest queued one) with what running it needs; None when
    there is nothing to do. A shard of a stopped job is dropped instead."""
    with sessions()() as session:
        dropped_from = shards.drop_shard_of_stopped_job(session, shard_id=shard_id)
        shard = None
        if dropped_from is None:
            claimed = None if fair else shard_id
            shard = shards.claim_shard(session, shard_id=claimed, worker=worker_name(task), device=device_name())
        if shard is None:
            session.commit()
            if dropped_from is not None:
                end_job_if_done(dropped_from)
            return None
        job = crud.get_job(session, job_id=shard.job_id)
        model = session.get(Model, job.model_id)
        scope = read_scope(session, job, worker_settings())
        session.commit()
    return shard, job, model, scope


def run_shard(task, shard_id: int, *, fair: bool = False) -> None:
    claimed = claim_for_run(task, shard_id, fair=fair)
    if claimed is None:
        return
    shard, job, model, scope = claimed
    attempt = shard.attempts
    presence.update(shard_id=shard.id)
    presence.hold("shard", shard.id, attempt)
    limits = worker_settings()

    def on_hard_limit():
        conclude(shard, attempt, *retry_or_fail(shard, attempt, ShardTimeLimit("hard", limits.predict_time_limit)))

    try:
        with hard_time_limit(limits.predict_time_limit, on_hard_limit):
            deadline = time.monotonic() + limits.predict_soft_time_limit
            # Bulk work makes way, between its batches, for interactive jobs waiting meanwhile.
            pause = functools.partial(serve_interactive, task, shard) if job.lane == "bulk" else None
            stopped = classify_shard(shard, attempt, scope, model, deadline, pause)
        status, message = ("cancelled" if stopped else "succeeded"), None
    except Exception as e:
        log.exception("shard %s of job %s failed (attempt %s)", shard.number, job.id, attempt)
        status, message = retry_or_fail(shard, attempt, e)
    conclude(shard, attempt, status, message)


class ShardTimeLimit(JobError):
    code = "time_limit"

    def __init__(self, kind: str, seconds: float):
        super().__init__(f"the shard ran past its {kind} time limit of {seconds:.0f}s")


def conclude(shard: JobShard, attempt: int, status: str, message: str | None) -> None:
    """Record a shard's end (unless it went back on the queue) and end its job if it was the last."""
    if status == "queued":
        return
    with sessions()() as session:
        shards.finish_shard(session, shard=shard, attempt=attempt, status=status, error_message=message)
        session.commit()
    end_job_if_done(shard.job_id)


def retry_or_fail(shard: JobShard, attempt: int, error: Exception) -> tuple[str, str]:
    """A failing shard is tried again a few times; then its files without a result become error rows."""
    message = f"{type(error).__name__}: {error}"
    with sessions()() as session:
        if attempt < worker_settings().shard_attempts:
            requeued = shards.requeue_shard(session, shard=shard, attempt=attempt, error_message=message)
            session.commit()
            if requeued:
                send_shard(shard.id, countdown=2**attempt)
            return "queued", message
        if not shards.hold_shard(session, shard=shard, attempt=attempt):
            return "queued", message  # another attempt owns it now: leave its files alone
        shards.fail_remaining(
            session, shard=shard, code=error_code(error), message=f"shard failed {attempt} times: {message}"
        )
        session.commit()
    return "failed", message


def end_job_if_done(job_id: uuid.UUID) -> None:
    """End the job if its work is all done. One that asked for an output object has it written
    first, so that a client who sees the job ended finds the object in place (two workers finishing
    the last shards at once may both write it: the same rows, the same file)."""
    with sessions()() as session:
        job = crud.get_job(session, job_id=job_id)
        limit = job.params.get("max_failed_fraction", worker_settings().max_failed_fraction)
        ended = shards.ending(session, job_id=job_id, max_failed_fraction=limit)
    output = None
    if ended is not None and shards.needs_output(job, ended.status):
        output = deliver_output(job_id, job.params["output"]["url"])
    with sessions()() as session:
        status = shards.complete_job(session, job_id=job_id, max_failed_fraction=limit, output=output)
        session.commit()
    if status is not None:
        log.info("prediction job %s %s", job_id, status)
        announce_end(job_id, status)


def deliver_output(job_id: uuid.UUID, url: str) -> dict:
    """Write the job's results as Parquet and upload them to the object its request named; returns
    what became of it ({url, bytes, rows}, or {url, error}): a failed upload is recorded with the
    job, never a lost job."""
    from grocery import storage

    path = exports.private_path(worker_settings(), job_id=job_id, purpose="output", output="parquet")
    try:
        with sessions()() as session:
            rows = exports.write_parquet(session, job_id=job_id, path=path)
        return {"url": url, "bytes": storage.upload_file(path, url), "rows": rows}
    except Exception as e:  # StorageError names the object and the reason, never the credentials
        log.warning("prediction job %s: its results were not written to %s: %s", job_id, url, e)
        if isinstance(e, storage.StorageError):
            return {"url": url, "error": {"code": e.code, "message": str(e)}}
        return {"url": url, "error": {"code": "output_failed", "message": f"{type(e).__name__}: {e}"}}
    finally:
        path.unlink(missing_ok=True)


def read_scope(session, job, settings: Settings) -> ReadScope:
    """What this job's files may resolve to: checked again here, at the moment they are read (a
    symlink may have changed since the submission was checked)."""
    owner = tokens.get_token(session, token_id=job.owner_token_id)
    return job_scope(
        settings, job_id=job.id, source=job.params.get("input", {}), token_roots=owner.roots if owner else None
    )


def interactive_companions(job_id: str) -> list[str]:
    """Other interactive jobs to classify with this one: those waiting now, and if fewer than a batch,
    those that arrive within GROCERY_INTERACTIVE_BATCH_DELAY_MS (TorchServe's max_batch_delay)."""
    settings = worker_settings()
    others = waiting_interactive(settings.interactive_batch_size, but=job_id)
    if len(others) < settings.interactive_batch_size - 1 and settings.interactive_batch_delay_ms > 0:
        time.sleep(settings.interactive_batch_delay_ms / 1000)
        others = waiting_interactive(settings.interactive_batch_size, but=job_id)
    return others[: settings.interactive_batch_size - 1]


def waiting_interactive(limit: int, but: str | None = None) -> list[str]:
    with sessions()() as session:
        waiting = crud.waiting_interactive_jobs(session, limit=limit)
    return [str(job_id) for job_id in waiting if str(job_id) != but]


def serve_interactive(task, shard: JobShard) -> None:
    """Run the interactive jobs waiting now, with the model already loaded, then hand this worker back
    to the bulk shard it paused: a request waits for one batch at most, not for a whole shard."""
    held = presence.held
    try:
        run_interactive(task, waiting_interactive(worker_settings().interactive_batch_size))
    finally:
        presence.update(job_id=None, shard_id=shard.id)
        presence.hold(*held)


def run_interactive(task, job_ids: list[str]) -> None:
    """Interactive jobs classified together (dynamic batching): each is claimed and listed into its one
    shard as any job is; then their files share the model's batches, and each job ends on its own."""
    singles = [shard_id for shard_id in map(functools.partial(list_job, task), job_ids) if shard_id is not None]
    claimed = [c for c in (claim_for_run(task, shard_id) for shard_id in singles) if c is not None]
    by_model = {}
    for shard, _, model, scope in claimed:
        by_model.setdefault(model.id, (model, []))[1].append((shard, scope))
    for model, group in by_model.values():
        classify_together(model, group)


def classify_together(model: Model, group: list[tuple[JobShard, ReadScope]]) -> None:
    works = [shard_work(shard, shard.attempts, scope) for shard, scope in group]
    ended = set()
    limit = worker_settings().predict_time_limit

    def fail_the_rest(error: Exception) -> None:
        for work in works:
            if work.shard.id not in ended:
                conclude(work.shard, work.attempt, *retry_or_fail(work.shard, work.attempt, error))

    try:
        with hard_time_limit(limit, lambda: fail_the_rest(ShardTimeLimit("hard", limit))):
            predictor = cached_predictor(str(model.id), model.artifact_path)
            results = iter(predictor.predict_files([path for work in works for path in work.todo]))
            for work in works:
                rows = work.first_rows + [next(results).to_row() for _ in work.todo]
                stop, _ = write_rows(work, rows, predictor.runtime, batched_with=len(works))
                ended.add(work.shard.id)
                conclude(work.shard, work.attempt, "succeeded" if stop is False else "cancelled", None)
    except Exception as e:
        log.exception("interactive shards %s failed", [work.shard.id for work in works])
        fail_the_rest(e)


@dataclass
class ShardWork:
    """A claimed shard attempt's files still without a result, and its counts so far."""

    shard: JobShard
    attempt: int
    todo: list[str]  # to classify
    first_rows: list[dict]  # refused without reading (outside the job's roots)
    done: int
    failed: int
    labels: Counter


def shard_work(shard: JobShard, attempt: int, scope: ReadScope) -> ShardWork:
    """What is left of the shard: a retried shard resumes after the rows its earlier attempts wrote."""
    with sessions()() as session:
        finished = shards.done_paths(session, job_id=shard.job_id, paths=shard.paths)
        done, failed, labels = shards.tally_shard(session, shard=shard)
    todo = [p for p in shard.paths if p not in finished]
    escaping = {p for p in todo if not scope.allows(p)}
    outside = "the file resolves outside the job's input roots"
    refused = [Prediction.failed(p, "outside_root", outside).to_row() for p in todo if p in escaping]
    kept = [p for p in todo if p not in escaping]
    return ShardWork(shard, attempt, kept, refused, done, failed, Counter(labels))


def write_rows(
    work: ShardWork, rows: list[dict], runtime: str, *, look_for_interactive: bool = False, batched_with: int = 1
) -> tuple[bool | None, bool]:
    """Write a batch of the shard's rows and its progress. Returns (stop, interactive_waiting): stop is
    None when this attempt no longer owns the shard (then nothing was written)."""
    work.done += len(rows)
    work.failed += sum(row["error_code"] is not None for row in rows)
    work.labels.update(row["label"] for row in rows if row["label"] is not None)
    shard, attempt = work.shard, work.attempt
    with sessions()() as session:
        # Ownership first: its row lock keeps a takeover out until these rows are committed.
        stop = shards.report_shard(
            session,
            shard=shard,
            attempt=attempt,
            done=work.done,
            failed=work.failed,
            labels=dict(work.labels),
            runtime=runtime,
        )
        if stop is None:
            session.rollback()
            log.warning("shard %s attempt %s was taken over: stopping without writing", shard.id, attempt)
            return None, False
        crud.add_predictions(session, job_id=shard.job_id, rows=rows)
        if batched_with > 1:
            crud.add_event(session, job_id=shard.job_id, kind="batched", data={"jobs": batched_with})
        interactive_waiting = look_for_interactive and crud.interactive_jobs_waiting(session)
        session.commit()
    return stop, interactive_waiting


def classify_shard(shard: JobShard, attempt: int, scope: ReadScope, model: Model, deadline: float, pause=None) -> bool:
    """Classify the shard's files that have no result yet; returns True when told to stop. Between
    batches, ``pause`` serves interactive jobs waiting meanwhile. Past ``deadline`` (the soft time
    limit) it raises, and the retry resumes after the rows written."""
    work = shard_work(shard, attempt, scope)
    predictor = cached_predictor(str(model.id), model.artifact_path)
    for batch in _batches(work.first_rows, predictor.predict_files(work.todo), predictor.batch_size):
        stop, interactive_waiting = write_rows(work, batch, predictor.runtime, look_for_interactive=pause is not None)
        if stop is not False:
            return True
        if interactive_waiting:
            pause()
        if time.monotonic() > deadline:
            raise ShardTimeLimit("soft", worker_settings().predict_soft_time_limit)
    return False


def _batches(first_rows: list[dict], results, size: int):
    if first_rows:
        yield first_rows
    batch = []
    for result in results:
        batch.append(result.to_row())
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@worker_ready.connect
def preload_serving_model(sender=None, **_) -> None:
    """Load the model POST /predict serves (the production alias, else the latest) before the first
    request needs it. Only in a process that runs tasks itself (the solo or threads pool): a parent
    that forks children must not hold ONNX Runtime's threads."""
    pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
    if pool is None or pool.__module__.endswith("prefork"):
        return
    try:
        with sessions()() as session:
            model = serving_model(session)
        if model is not None:
            cached_predictor(str(model.id), model.artifact_path)
            log.info("preloaded model %s (version %s)", model.id, model.version)
    except Exception:  # a missing artifact or database fails the first job clearly; the worker still starts
        log.warning("could not preload the serving model", exc_info=True)


def local_artifact(settings: Settings, model_id: str, artifact_path: str) -> Path:
    """The model's artifact folder here: for one in a bucket, this machine's copy (what serving reads),
    downloaded once; the runtime choice is kept in that copy, per machine as it is measured."""
    from grocery.artifact import ArtifactError, serving_file

    try:
        return artifacts.local_folder(settings, model_id=model_id, artifact_path=artifact_path, matches=serving_file)
    except StorageError as e:
        if e.code != "not_found":
            raise
        raise ArtifactError(f"{artifact_path} is not a model artifact ({e})") from None


@functools.lru_cache(maxsize=2)
def cached_predictor(model_id: str, artifact_path: str):
    """Each worker process loads a model once and keeps it, by model id, for the next shards. Its
    first load on a machine measures the runtimes (grocery.runtimes); the choice is kept with the model."""
    from grocery.predict import Predictor

    settings = worker_settings()
    threads = settings.worker_threads or len(os.sched_getaffinity(0))
    folder = local_artifact(settings, model_id, artifact_path)
    predictor = Predictor.from_path(folder, threads=threads, decode_threads=threads, runtime=settings.runtime)
    if predictor.choice is not None:
        with sessions()() as session:
            crud.record_runtime_choice(
                session,
                model_id=uuid.UUID(model_id),
                machine=predictor.choice.record["machine"],
                choice=predictor.choice.record,
            )
            session.commit()
        log.info("model %s serves on %s here (%s)", model_id, predictor.runtime, predictor.choice.record["machine"])
    return predictor
