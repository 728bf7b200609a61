"""Celery workers: the heavy image work of enrollment and clustering jobs.

`celery -A workers.app worker` starts one. Tasks are thin wrappers over the service's
batch functions (`identity.enroll.enroll_batch`), which are idempotent, so a redelivered
task adds nothing.
"""
