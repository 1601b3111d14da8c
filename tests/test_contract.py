"""The job contract (service/contract.py) and the registry of job kinds (service/kinds.py): one task
table that the API sends by and the workers run."""

from service import contract, kinds
from service.kinds import JOB_TYPES
from service.settings import Settings


def test_every_job_type_has_its_task_and_every_task_a_queue():
    assert {kind.name for kind in kinds.KINDS.values()} == set(JOB_TYPES)
    assert set(kinds.QUEUES) == {task.queue for task in kinds.TASKS}
    assert len(set(kinds.QUEUES)) == len(kinds.QUEUES)


def test_a_worker_serving_predictions_takes_interactive_work_first():
    assert kinds.worker_queues(["predict"]) == ["interactive", "predict", "shards"]
    assert kinds.worker_queues(["train", "predict"]) == ["interactive", "predict", "train", "shards"]
    assert kinds.worker_queues(["train"]) == ["train"]


def test_the_workers_run_exactly_the_tasks_the_contract_names():
    celery = contract.make_celery(Settings())
    celery.loader.import_default_modules()  # what a worker does as it starts: the task modules
    ours = {name for name in celery.tasks if not name.startswith("celery.")}
    assert ours == {task.name for task in kinds.TASKS}
    # Redis is asked for the queues in the order a worker lists them: interactive work first.
    assert celery.conf.broker_transport_options["queue_order_strategy"] == "priority"
