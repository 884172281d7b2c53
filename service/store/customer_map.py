"""The source's customer -> user map, learned at intake (ACCEPT_JOB_SCRIPT) and never re-pointed.

A user id may come from a field the buyer can set (service.sources.extraction.BUYER_SETTABLE_FIELDS,
when the operator trusts it) or from metadata a compromised integration wrote: once a customer is
learned for a user, an event naming another user for it is not delivered as either. Intake
dead-letters it (`identity_conflict`), so the ledger balances and an operator decides.

Webhooks arrive about in event order, so the first user learned is the one the customer's oldest
event names. A backfill reads newest first: fed in that order, the newest user would be learned and
the older events dead-lettered, the opposite of live. So before it feeds anything a backfill gathers,
per customer not learned yet, the user of its oldest event in the window (FirstUsers: a hash in
Redis, one field per such customer, about what the map itself gains from the run; nothing grows in
the process), and learns those first.
"""

from __future__ import annotations

import contextlib
import uuid

from redis import Redis
from redis.exceptions import RedisError

from service.store import keys

FIRST_USERS_TTL_SECONDS = 24 * 3600  # a run that died leaves its hash this long after its last page
MERGE_BATCH = 1000  # customers read (HSCAN) and learned (HSETNX) per round trip


class IdentityConflict(Exception):
    """The event names a user for a customer learned for another one: nothing was written."""

    def __init__(self, customer_id: str, mapped_user_id: str) -> None:
        super().__init__(f"customer {customer_id} is mapped to user {mapped_user_id}")
        self.customer_id = customer_id
        self.mapped_user_id = mapped_user_id


def accepted(answer: int | bytes | str, customer_id: str) -> bool:
    """ACCEPT_JOB_SCRIPT's answer: True (accepted now), False (a duplicate); raises IdentityConflict
    when it answered the user the customer is mapped to."""
    if isinstance(answer, bytes | str):
        raise IdentityConflict(customer_id, answer.decode() if isinstance(answer, bytes) else answer)
    return answer == 1


# Note the users a page of events names for customers not learned yet. The pairs come newest first,
# each overwriting the one before: what stays is the user of the customer's oldest event read.
# KEYS: customer_map, first_users (keys.first_users)
# ARGV: ttl (seconds, of first_users), then customer_id, user_id for each event, newest first
# Returns: the number of customers not learned yet among them
NOTE_FIRST_USERS_SCRIPT = """
local customer_map = KEYS[1]
local first_users = KEYS[2]
local ttl = ARGV[1]
local noted = 0
for i = 2, #ARGV, 2 do
    if redis.call('HEXISTS', customer_map, ARGV[i]) == 0 then
        redis.call('HSET', first_users, ARGV[i], ARGV[i + 1])
        noted = noted + 1
    end
end
if noted > 0 then redis.call('EXPIRE', first_users, ttl) end
return noted
"""


class FirstUsers:
    """One backfill run's users of the oldest event per customer not learned yet (keys.first_users)."""

    def __init__(self, redis: Redis, source: str, run: str | None = None) -> None:
        self.redis = redis
        self.customer_map = keys.customer_map(source)
        self.key = keys.first_users(source, run or uuid.uuid4().hex)
        self._note = redis.register_script(NOTE_FIRST_USERS_SCRIPT)

    def note(self, named: list[tuple[str, str]]) -> None:
        """(customer, user) of each event read, newest first."""
        if named:
            args = [FIRST_USERS_TTL_SECONDS, *(value for pair in named for value in pair)]
            self._note(keys=[self.customer_map, self.key], args=args)

    def learn(self) -> int:
        """Learn each customer for its noted user unless it was learned meanwhile (never re-pointed: a
        webhook may have taught it since); then forget the notes. The number learned."""
        learned, cursor = 0, 0
        while True:
            cursor, batch = self.redis.hscan(self.key, cursor, count=MERGE_BATCH)
            if batch:
                pipe = self.redis.pipeline(transaction=False)
                for customer_id, user_id in batch.items():
                    pipe.hsetnx(self.customer_map, customer_id, user_id)
                learned += sum(pipe.execute())
            if cursor == 0:
                break
        self.discard()
        return learned

    def discard(self) -> None:
        self.redis.delete(self.key)

    def forget(self) -> None:
        """discard, best-effort: on the way out of a run that failed (Redis among the causes) or was
        stopped; notes left behind expire (FIRST_USERS_TTL_SECONDS)."""
        with contextlib.suppress(RedisError):
            self.discard()
