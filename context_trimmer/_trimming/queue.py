"""Folds as jobs on a PostgreSQL task queue (procrastinate), run by ``context-trimmer worker``.

``Trimmer(folds="queue")`` sets a :class:`QueueDispatch` on its Folder: a due fold is
deferred as a job (from the background thread, so prepare() pays nothing for it) on
the ``context_trimmer`` queue, instead of being folded in this process. A job carries
identifiers only: the path's head hash, user, conversation, model, where its span
starts, and the trimming options that decide the fold; never message text. One job per
conversation may wait at a time (procrastinate's ``queueing_lock``), and jobs of one
conversation run one after another (its ``lock``).

:class:`FoldWorker` runs a job: it loads the path from the store, skips it when its
span was folded meanwhile (or is no longer due), and folds under the fold lease with
the Folder's failure policy (a SummarizerError is recorded and the extractive
summarizer folds instead). A 429 from the summarizer raises :class:`FoldDeferred`
instead, so procrastinate puts the job back with an exponential backoff; on its last
attempt the failure policy applies. It logs one line per job.

A worker killed mid-fold (``kill -9``, a lost host) does not stop its conversation's
folds: workers beat every :data:`HEARTBEAT_SECONDS`, and every worker, at start-up and
every :data:`RECOVER_SECONDS`, looks for jobs left ``doing`` by a worker silent for
:data:`STALLED_SECONDS` (procrastinate's stalled jobs; that includes jobs whose dead
worker was already pruned, left ``doing`` with no worker). Each such job's fold lease
(held under the job's id) is dropped and the job is put back on the queue, so another
worker takes it over within about half a minute; if a later job of the same
conversation already waits (its queueing lock), the stalled one is marked failed
instead and the waiting one folds. The lease still keeps each span folded once.

procrastinate's schema (its own tables, functions and types, beside ours, not in our
Alembic chain) is applied when absent, under our migration lock, by whichever of the
app or the worker comes first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from .._exceptions import ConfigurationError
from .._options import TrimmerOptions
from .._store.db import Database
from .path import StoredPath

if TYPE_CHECKING:
    import procrastinate


log = logging.getLogger("context_trimmer.worker")
QUEUE = "context_trimmer"
FOLD_TASK = "context_trimmer.fold"
COMPACT_TASK = "context_trimmer.compact"
ATTEMPTS = 6  # a 429 puts a job back up to 5 times: 2, 4, 8, 16, 32 s later
HEARTBEAT_SECONDS = 5.0
"""How often a worker tells the database it is alive."""
STALLED_SECONDS = 15.0
"""A worker silent this long is dead: its ``doing`` jobs are put back."""
RECOVER_SECONDS = 5.0
"""How often each worker looks for stalled jobs (and once at start-up)."""
BACKOFF = 2
JOB_OPTIONS = (
    "keep_last",
    "fold_every",
    "keep_tokens",
    "summary_tokens",
    "summary_share",
    "lease_seconds",
)
INSTALL = "folds on a queue need procrastinate: from the checkout, pip install '.[queue]'"


def require_procrastinate() -> None:
    """A ConfigurationError that says how to install procrastinate, if it is missing."""
    try:
        import procrastinate  # noqa: F401
    except ModuleNotFoundError as missing:
        raise ConfigurationError(INSTALL) from missing


def conninfo(db: Database) -> str:
    """The libpq URL of the store (its SQLAlchemy URL without the driver)."""
    url = db.engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def require_postgres(db: Database, what: str) -> None:
    """ConfigurationError (the store closed) unless the store is PostgreSQL."""
    if db.engine.dialect.name != "postgresql":
        db.close()
        raise ConfigurationError(
            f"{what} needs PostgreSQL as the store (the queue lives in it); "
            f"{db.display_url} is {db.engine.dialect.name}: use folds='thread' there"
        )


def apply_schema(db: Database) -> bool:
    """Create procrastinate's tables and functions unless they exist; True if it did.
    Under the migration lock, so hosts starting together apply it once."""
    require_procrastinate()
    from procrastinate.schema import SchemaManager

    from .._store.migrate import serialize_migrations

    schema = SchemaManager.get_schema()
    with db.writing() as connection:
        serialize_migrations(connection)
        present = connection.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar()
        if present is not None:
            return False
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute(schema)  # several statements, no parameters: psycopg runs them all
    return True


def fold_job(path: StoredPath, start: int, options: TrimmerOptions) -> dict[str, Any]:
    """A fold job's arguments: identifiers and trimming options, never message text."""
    return {
        "head": path.hashes[-1],
        "user": path.user,
        "conversation": path.conversation_id,
        "model": path.info.name,
        "start": start,
        "options": {name: getattr(options, name) for name in JOB_OPTIONS},
    }


class QueueDispatch:
    """Defers due folds as jobs (a Folder's ``dispatch`` under ``folds="queue"``)."""

    def __init__(self, db: Database, options: TrimmerOptions):
        require_postgres(db, 'folds="queue"')
        apply_schema(db)
        import procrastinate

        self._options = options
        connector = procrastinate.SyncPsycopgConnector(
            conninfo=conninfo(db), min_size=1, max_size=2
        )
        self.app: procrastinate.App = procrastinate.App(connector=connector).open()

    def __call__(self, path: StoredPath, start: int) -> None:
        from procrastinate.exceptions import AlreadyEnqueued

        assert path.anchor_hash is not None
        deferrer = self.app.configure_task(
            FOLD_TASK,
            queue=QUEUE,
            lock=f"fold:{path.anchor_hash}",
            queueing_lock=f"fold:{path.anchor_hash}",
        )
        try:
            deferrer.defer(**fold_job(path, start, self._options))
        except AlreadyEnqueued:
            pass  # this conversation's waiting job folds what is due when it runs
        except Exception:  # the next prepare() that finds the fold due queues it again
            log.exception("could not queue the fold of conversation %s", path.conversation_id)

    def close(self) -> None:
        self.app.close()
