"""Several Lua scripts in one round trip to Redis (a pipeline of EVALSHA, not a transaction).

redis-py's pipeline asks SCRIPT EXISTS before every execution that runs a registered script (a
round trip more); here each script is sent by its sha alone, and one Redis does not know (restarted,
flushed) is loaded and run again on its own: only the scripts that did not run are run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


@dataclass(frozen=True)
class ScriptCall:
    script: Script  # registered with redis.register_script
    keys: list[str]
    args: list[Any]


def run_at_once(redis: Redis, calls: list[ScriptCall]) -> list[Any]:
    """Each call's answer, in order; an error a script raised is raised (the first one)."""
    if not calls:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        answers = pipe.execute(raise_on_error=False)
    for n, (call, answer) in enumerate(zip(calls, answers, strict=True)):
        if isinstance(answer, NoScriptError):
            answers[n] = call.script(keys=call.keys, args=call.args)  # loads it, then runs it
        elif isinstance(answer, Exception):
            raise answer
    return answers
