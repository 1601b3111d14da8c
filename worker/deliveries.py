"""The webhook courier: every worker runs one in a thread, beside the reconciler. It claims the
deliveries that are due (service/deliveries.py: a job's end wrote them, in its own transaction) and
POSTs each from a small pool of threads, so that a receiver that never answers holds one thread for
GROCERY_WEBHOOK_TIMEOUT_SECONDS and nothing else: no job, no other receiver. A failed attempt is
retried with exponential backoff until GROCERY_WEBHOOK_RETRY_FOR after the job's end; every attempt,
however it went, is recorded on the delivery. Each worker's courier claims rows the others have not
(SKIP LOCKED), and an attempt holds its delivery for a lease, so a courier that dies mid-attempt only
delays it."""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from celery.signals import worker_ready

from service import deliveries, documents, webhooks
from service.settings import Settings
from service.tables import Job
from worker.process import sessions

log = logging.getLogger(__name__)
THREADS = 8  # attempts in flight per worker
POLL_SECONDS = 1.0  # how soon a new delivery, or a retry that falls due, is noticed
LEASE_MARGIN_SECONDS = 30.0  # beyond the attempt's timeout, before another worker may take it over
MAX_RETRY_SECONDS = 3600.0  # the backoff doubles up to this


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before the attempt after ``attempt`` (the first retry: GROCERY_WEBHOOK_RETRY_SECONDS)."""
    return min(settings.webhook_retry_seconds * 2 ** (attempt - 1), MAX_RETRY_SECONDS)


def claim(settings: Settings, limit: int) -> list[tuple[deliveries.Due, bytes]]:
    """Due deliveries, each with its body: the job's JSON as GET /jobs/<id> shows it."""
    lease = settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
    with sessions()() as session:
        claimed = deliveries.claim_due(session, limit=limit, lease_seconds=lease)
        bodies = [body(session, due) for due in claimed]
        session.commit()
    return list(zip(claimed, bodies, strict=True))


def body(session, due: deliveries.Due) -> bytes:
    document = documents.job_document(session, session.get(Job, due.job_id))
    return json.dumps(document, separators=(",", ":")).encode()


def attempt(settings: Settings, due: deliveries.Due, payload: bytes) -> webhooks.Answer:
    """One POST, the URL checked again first: what it resolves to now must still be allowed."""
    secret = due.secret or settings.webhook_secret
    if not secret:
        return webhooks.Answer(webhooks.Outcome.REFUSED, None, "no signing secret: GROCERY_WEBHOOK_SECRET is unset")
    try:
        target = webhooks.checked_target(due.url, settings)
    except webhooks.Refused as e:
        return webhooks.Answer(webhooks.Outcome.REFUSED, None, str(e))
    except OSError as e:  # the name does not resolve (now): try again later
        return webhooks.Answer(webhooks.Outcome.UNREACHABLE, None, f"{due.url!r} does not resolve: {e}")
    headers = webhooks.signed_headers(
        delivery_id=str(due.id), event=due.event, attempt=due.attempt, secret=secret, body=payload
    )
    return webhooks.post(target, payload, headers, settings.webhook_timeout_seconds)


def deliver(settings: Settings, due: deliveries.Due, payload: bytes) -> None:
    """Make one attempt and record it."""
    started, clock = datetime.now(timezone.utc), time.monotonic()
    answer = attempt(settings, due, payload)
    entry = {
        "number": due.attempt,
        "at": started.isoformat(),
        "outcome": answer.outcome,
        "status_code": answer.status_code,
        "error": answer.error,
        "seconds": round(time.monotonic() - clock, 3),
    }
    final = answer.outcome == webhooks.Outcome.REFUSED
    with sessions()() as session:
        status = deliveries.record_attempt(
            session,
            delivery_id=due.id,
            attempt=due.attempt,
            entry=entry,
            delivered=answer.outcome == webhooks.Outcome.DELIVERED,
            retry_in=None if final else retry_delay(settings, due.attempt),
            retry_for=settings.webhook_retry_for_seconds,
        )
        session.commit()
    log.info("webhook %s of job %s, attempt %d: %s; now %s", due.id, due.job_id, due.attempt, answer.outcome, status)


class Courier(threading.Thread):
    def __init__(self, settings: Settings):
        super().__init__(name="webhooks", daemon=True)
        self.settings = settings
        self.in_flight: set = set()
        self.freed = threading.Event()

    def run(self) -> None:
        with ThreadPoolExecutor(THREADS, thread_name_prefix="webhook") as pool:
            while True:
                free = THREADS - len(self.in_flight)
                try:
                    claimed = claim(self.settings, free) if free else []
                except Exception:  # the database may be down: try again next round
                    log.warning("claiming webhook deliveries failed", exc_info=True)
                    claimed = []
                for due, payload in claimed:
                    self.launch(pool, due, payload)
                if len(claimed) < free or not free:
                    self.freed.wait(POLL_SECONDS)
                    self.freed.clear()

    def launch(self, pool: ThreadPoolExecutor, due: deliveries.Due, payload: bytes) -> None:
        future = pool.submit(self.deliver, due, payload)
        self.in_flight.add(future)
        future.add_done_callback(self.done)

    def deliver(self, due: deliveries.Due, payload: bytes) -> None:
        try:
            deliver(self.settings, due, payload)
        except Exception:  # its lease ends, and it is tried again
            log.warning("webhook delivery %s failed to run", due.id, exc_info=True)

    def done(self, future) -> None:
        self.in_flight.discard(future)
        self.freed.set()


@worker_ready.connect
def start_courier(**_) -> None:
    Courier(Settings.from_env()).start()
