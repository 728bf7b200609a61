"""Celery workers: the heavy image work of enrollment and clustering jobs.

`celery -A workers.app worker` starts one. Each task dispatches to a service method (the
service's batch work is idempotent, so a redelivered task adds nothing); identity never
imports this package: it sends tasks by name (`identity.runners.celery`).
"""
