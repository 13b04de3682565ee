"""What a database error means, decided once for the whole service.

Every SQLSTATE, and every failure that has none (the connection could not be made or was lost),
falls into exactly one class below, and the class says what each adapter does:
  - the API answers with its HTTP status and error_code (app/api/errors.py);
  - a consumer dead-letters the message, rolls the batch back and retries it (at once or with
    backoff, the messages stay unacknowledged), or retries that one message with backoff and
    dead-letters it after POSITION_MANAGER_MAX_DELIVERY_ATTEMPTS (consumers/);
  - a job exits with its exit code (jobs/).
No other module looks at a SQLSTATE to decide what to do. `python -m app.sqlstates` prints the
table as Markdown for the documentation; tests/app/test_sqlstates.py fails when the SQL of sql/
raises a SQLSTATE that is not classified here.
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

# What a consumer does when applying a message raised.
DEAD_LETTER = "dead-letter"                  # the message is bad: to the dead-letter queue at once, acked
RETRY_NOW = "retry batch now"                # roll back; apply the batch again at once a few times, then as RETRY_LATER
RETRY_LATER = "retry batch later"            # roll back; nothing acked; the batch again after a backoff, forever
RETRY_MESSAGE = "retry message, then dead-letter"  # that message alone: backoff; dead-lettered after max attempts

# How a job (bin/snapshot, bin/api-keys, ...) exits after a database error: 1, "failure".
JOB_FAILURE = 1


@dataclass(frozen=True)
class ErrorClass:
    name: str
    meaning: str
    http_status: int
    error_code: str      # the API's error_code
    consumer: str        # DEAD_LETTER, RETRY_NOW, RETRY_LATER or RETRY_MESSAGE
    job_exit: int

    @property
    def retry_batch(self) -> bool:
        """The database, not the message, is the problem: roll the batch back and apply it again."""
        return self.consumer in (RETRY_NOW, RETRY_LATER)


INVALID_INPUT = ErrorClass(
    "invalid_input", "the input is malformed or breaks a rule; the message names the field",
    400, "invalid_parameter", DEAD_LETTER, JOB_FAILURE)
NOT_FOUND = ErrorClass(
    "not_found", "no such position or API key", 404, "not_found", RETRY_MESSAGE, JOB_FAILURE)
PRECONDITION_FAILED = ErrorClass(
    "precondition_failed", "the expected version (If-Match) is not the current one",
    412, "precondition_failed", RETRY_MESSAGE, JOB_FAILURE)
CONFLICT = ErrorClass(
    "conflict", "the current state forbids it (a flat position to close, an open one to open or delete, "
    "a live API key of that name, a position deleted meanwhile)",
    409, "conflict", RETRY_MESSAGE, JOB_FAILURE)
SERIALIZATION = ErrorClass(
    "serialization", "deadlock or serialization failure: rolled back, running it again may succeed",
    409, "conflict", RETRY_NOW, JOB_FAILURE)
LOCK_NOT_AVAILABLE = ErrorClass(
    "lock_not_available", "a row or table lock was not available", 409, "conflict", RETRY_LATER, JOB_FAILURE)
TIMEOUT = ErrorClass(
    "timeout", "the statement was cancelled (statement_timeout of the API's connections)",
    503, "database_timeout", RETRY_MESSAGE, JOB_FAILURE)
UNAVAILABLE = ErrorClass(
    "unavailable", "the database is unreachable or not serving: connection refused or lost, shutting "
    "down or starting, out of connections, memory or disk", 503, "database_unavailable", RETRY_LATER, JOB_FAILURE)
ENVIRONMENT = ErrorClass(
    "environment", "the database lacks what we call (not migrated, wrong schema or privileges): "
    "a deployment problem", 500, "internal_error", RETRY_LATER, JOB_FAILURE)
UNKNOWN = ErrorClass(
    "unknown", "anything else: a bug", 500, "internal_error", RETRY_MESSAGE, JOB_FAILURE)

CLASSES = (INVALID_INPUT, NOT_FOUND, PRECONDITION_FAILED, CONFLICT, SERIALIZATION, LOCK_NOT_AVAILABLE,
           TIMEOUT, UNAVAILABLE, ENVIRONMENT, UNKNOWN)

# SQLSTATE -> class; an exact SQLSTATE wins over its two-character SQLSTATE class.
BY_SQLSTATE: dict[str, ErrorClass] = {
    "P0002": NOT_FOUND,            # no_data_found: the SQL raises it for an unknown position or key
    "PM412": PRECONDITION_FAILED,  # our own code: If-Match names another version
    "23505": CONFLICT,             # unique_violation: a live API key of that name exists
    "23503": CONFLICT,             # foreign_key_violation: the position was deleted meanwhile (a snapshot of it)
    "55000": CONFLICT,             # object_not_in_prerequisite_state: nothing to close
    "40001": SERIALIZATION,        # serialization_failure
    "40P01": SERIALIZATION,        # deadlock_detected
    "55P03": LOCK_NOT_AVAILABLE,   # lock_not_available
    "57014": TIMEOUT,              # query_canceled
}
BY_SQLSTATE_CLASS: dict[str, ErrorClass] = {
    "22": INVALID_INPUT,   # data exception; the SQL raises 22023 naming the field
    "08": UNAVAILABLE,     # connection exception
    "53": UNAVAILABLE,     # insufficient resources: disk full, out of memory, too many connections
    "57": UNAVAILABLE,     # operator intervention: shutdown, crash, cannot connect now (57014 is above)
    "58": UNAVAILABLE,     # system error: I/O error
    "42": ENVIRONMENT,     # undefined function or table, insufficient privilege
    "3F": ENVIRONMENT,     # invalid schema name
}


def classify_sqlstate(sqlstate: str) -> ErrorClass:
    return BY_SQLSTATE.get(sqlstate) or BY_SQLSTATE_CLASS.get(sqlstate[:2]) or UNKNOWN


def is_classified(sqlstate: str) -> bool:
    """True when the table names this SQLSTATE (exactly or by its class), not just the fallback."""
    return sqlstate in BY_SQLSTATE or sqlstate[:2] in BY_SQLSTATE_CLASS


def classify(exc: BaseException) -> ErrorClass:
    """The class of any exception: by its SQLSTATE; without one, a psycopg operational or interface
    error means the connection failed or was lost (refused, timed out, closed, no pooled connection
    in time): unavailable. Everything else is unknown."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return classify_sqlstate(sqlstate)
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return UNAVAILABLE
    return UNKNOWN


def markdown_table() -> str:
    """SQLSTATE -> class -> HTTP status -> consumer action -> job exit code, for the documentation."""
    rows = [(f"`{state}`", cls) for state, cls in BY_SQLSTATE.items()]
    rows += [(f"`{prefix}xxx`", cls) for prefix, cls in BY_SQLSTATE_CLASS.items()]
    rows += [("none: the connection failed or was lost", UNAVAILABLE), ("any other", UNKNOWN)]
    lines = ["| SQLSTATE | class | meaning | HTTP status | consumer | job exit code |",
             "|---|---|---|---|---|---|"]
    for state, cls in rows:
        lines.append(f"| {state} | {cls.name} | {cls.meaning} | {cls.http_status} ({cls.error_code}) | "
                     f"{cls.consumer} | {cls.job_exit} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
