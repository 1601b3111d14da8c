"""The Celery application: `celery -A worker.celery_app worker -Q train,predict`."""

from celery import Celery

from service.settings import Settings

# Each job type's first task and queue; the API sends the same names (api/__init__.py).
JOB_TASKS = {"train": "worker.training.run_train_job", "predict": "worker.prediction.run_predict_job"}
SHARD_TASK = "worker.prediction.run_predict_shard"


def make_celery(settings: Settings) -> Celery:
    app = Celery(
        "grocery", broker=settings.redis_url, include=["worker.training", "worker.prediction", "worker.reconciler"]
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        # A job is acknowledged only when its task returns: a worker killed mid-job leaves it
        # on the queue for another worker, and the attempt guard makes the redelivery safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # status and results live in PostgreSQL
        task_routes={
            JOB_TASKS["train"]: {"queue": "train"},
            JOB_TASKS["predict"]: {"queue": "predict"},
            SHARD_TASK: {"queue": "predict"},
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


# Creating the app connects to nothing; Celery's command line needs it at module level.
app = make_celery(Settings.from_env())
