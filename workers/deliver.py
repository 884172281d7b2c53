"""Where rq finds jobs queued before the move to workers/delivery/: their hashes name
`workers.deliver.deliver` and `workers.deliver.on_job_failure`. Keep until no such job can be
left (a queue drained after the upgrade, and failed jobs older than FAILED_JOB_TTL)."""

from workers.delivery.job import deliver, on_job_failure

__all__ = ["deliver", "on_job_failure"]
