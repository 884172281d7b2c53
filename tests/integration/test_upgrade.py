"""Jobs queued by an older release still run after an upgrade: rq keeps the job function's dotted
name inside each queued job, and that name moved with the layout (workers.deliver ->
workers.delivery.job)."""

from __future__ import annotations

from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from service.config import Settings
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.jobs import DELIVER_FUNC, LEGACY_DELIVER_FUNC
from service.store.ledger import Store
from tests.conftest import an_update
from workers.delivery.context import configure
from workers.runner import build_context, run_worker


def test_a_job_queued_under_the_old_module_name_is_delivered(
    settings: Settings, redis: Redis, sandbox: SandboxServer
) -> None:
    update = an_update("evt_old", user_id="u_old", custom={"plan": "legacy"})
    store = Store.from_settings(redis, settings)
    assert store.accept(update)
    ctx = build_context(settings, "usercom")
    queue = ctx.queues[keys.LIVE]
    # What the release before the move wrote: the same job, naming workers.deliver.deliver.
    [job_id] = queue.job_ids
    queue.remove(job_id)
    old = Job.create(
        LEGACY_DELIVER_FUNC,
        args=(update.to_dict(), 1, None, keys.LIVE),
        connection=redis,
        serializer=JSONSerializer,
        id=job_id,
        on_failure=None,
    )
    queue.enqueue_job(old)
    assert (
        Job.fetch(job_id, connection=redis, serializer=JSONSerializer).func_name == LEGACY_DELIVER_FUNC != DELIVER_FUNC
    )
    configure(ctx)
    run_worker(settings, lane=keys.LIVE, destination="usercom", burst=True)
    user = sandbox.state.user_by_custom_id("u_old")
    assert user is not None and user["attributes"]["plan"] == "legacy"
    assert store.ledger()["delivered"] == 1 and store.ledger()["in_flight"] == 0
