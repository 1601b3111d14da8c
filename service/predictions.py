"""Small keyword-only data functions over result rows: one per file of a prediction job, written in
batches, read in pages, counted, streamed. Callers own the transaction."""

import uuid
from collections.abc import Iterator

from sqlalchemy import Select, and_, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, aliased

from service.tables import PredictionRow


def add_predictions(session: Session, *, job_id: uuid.UUID, rows: list[dict]) -> None:
    """Insert per-file results in one statement; a re-run batch adds no duplicates."""
    if rows:
        statement = insert(PredictionRow).on_conflict_do_nothing(constraint="predictions_job_id_path_key")
        session.execute(statement, [{"job_id": job_id, **row} for row in rows])


def predictions_query(
    *,
    job_id: uuid.UUID,
    label: str | None = None,
    min_confidence: float | None = None,
    max_confidence: float | None = None,
    errors_only: bool = False,
    after_id: int | None = None,
) -> Select:
    """A job's results in the order they were written, filtered."""
    query = select(PredictionRow).where(PredictionRow.job_id == job_id).order_by(PredictionRow.id)
    if label is not None:
        query = query.where(PredictionRow.label == label)
    if min_confidence is not None:
        query = query.where(PredictionRow.confidence >= min_confidence)
    if max_confidence is not None:
        query = query.where(PredictionRow.confidence <= max_confidence)
    if errors_only:
        query = query.where(PredictionRow.error_code.is_not(None))
    if after_id is not None:
        query = query.where(PredictionRow.id > after_id)
    return query


def get_prediction(session: Session, *, job_id: uuid.UUID, path: str) -> PredictionRow | None:
    return session.scalar(select(PredictionRow).where(PredictionRow.job_id == job_id, PredictionRow.path == path))


def list_predictions(session: Session, *, job_id: uuid.UUID, limit: int, **filters) -> list[PredictionRow]:
    return list(session.scalars(predictions_query(job_id=job_id, **filters).limit(limit)))


def count_predictions(session: Session, *, job_id: uuid.UUID, **filters) -> int:
    query = predictions_query(job_id=job_id, **filters)
    return session.scalar(select(func.count()).select_from(query.subquery()))


def stream_predictions(session: Session, *, job_id: uuid.UUID, **filters) -> Iterator[PredictionRow]:
    """Every matching result through a server-side cursor: memory holds one batch, not the set."""
    query = predictions_query(job_id=job_id, **filters).execution_options(yield_per=1000)
    for prediction in session.scalars(query):
        yield prediction
        session.expunge(prediction)  # the identity map would otherwise keep every row


def prediction_pages(
    session: Session, *, job_id: uuid.UUID, page_size: int, **filters
) -> Iterator[list[PredictionRow]]:
    """Every matching result a page at a time, each page its own keyset query (ids above the last
    page's): no cursor stays open while the caller works on a page. Memory holds one page."""
    after_id = None
    while page := list_predictions(session, job_id=job_id, limit=page_size, after_id=after_id, **filters):
        yield page
        after_id = page[-1].id
        for prediction in page:
            session.expunge(prediction)  # the identity map would otherwise keep every row


def paired_labels(session: Session, *, job_a: uuid.UUID, job_b: uuid.UUID) -> list[tuple[str, str | None, str | None]]:
    """(true label, A's label, B's label) of each labelled file both evaluation jobs classified, by path."""
    a, b = aliased(PredictionRow), aliased(PredictionRow)
    query = (
        select(a.true_label, a.label, b.label)
        .join(b, and_(b.path == a.path, b.job_id == job_b))
        .where(a.job_id == job_a, a.true_label.is_not(None))
        .order_by(a.id)
    )
    return [tuple(row) for row in session.execute(query)]
