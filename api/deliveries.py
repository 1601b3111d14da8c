"""GET /jobs/<id>/deliveries: the webhook deliveries of a job's end, each with its every attempt."""

from flask import Blueprint, jsonify

from api.deps import existing_job, iso
from api.resources import resources
from service import deliveries
from service.states import DeliveryStatus
from service.tables import Delivery

blueprint = Blueprint("deliveries", __name__)


def delivery_json(delivery: Delivery) -> dict:
    pending = delivery.status == DeliveryStatus.PENDING
    return {
        "id": str(delivery.id),
        "event": delivery.event,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "created_at": iso(delivery.created_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if pending else None,
        "finished_at": iso(delivery.finished_at),
        "last_error": delivery.last_error,
        "log": delivery.log,
    }


@blueprint.get("/jobs/<job_id>/deliveries")
def job_deliveries(job_id: str):
    with resources().sessions() as session:
        job = existing_job(session, job_id)
        found = deliveries.list_deliveries(session, job_id=job.id)
        return jsonify({"notify": job.notify, "deliveries": [delivery_json(d) for d in found]})
