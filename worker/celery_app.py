"""The workers' Celery application: `celery -A worker.celery_app worker -Q train,predict`.

Configured in service/contract.py, as the API's is; creating it connects to nothing, and Celery's
command line needs it at module level.
"""

from service.contract import make_celery
from service.settings import Settings

app = make_celery(Settings.from_env())
