"""Celery workers: tasks take a job id, call grocery, write results to PostgreSQL."""
