"""The source's customer -> user map, learned at intake (ACCEPT_JOB_SCRIPT) and never re-pointed.

A user id may come from a field the buyer can set (service.sources.extraction.BUYER_SETTABLE_FIELDS,
when the operator trusts it) or from metadata a compromised integration wrote: once a customer is
learned for a user, an event naming another user for it is not delivered as either. Intake
dead-letters it (`identity_conflict`), so the ledger balances and an operator decides.
"""

from __future__ import annotations


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
