"""The fold worker: runs the fold jobs that ``Trimmer(folds="queue")`` defers (see
``_trimming.queue``), against the store of a :class:`~context_trimmer.Trimmer`.

:class:`FoldWorker` runs a job: it loads the path from the store, skips it when its
span was folded meanwhile (or is no longer due), and folds under the fold lease with
the Folder's failure policy (a SummarizerError is recorded and the extractive
summarizer folds instead). A 429 from the summarizer raises ``FoldDeferred`` instead,
so procrastinate puts the job back with an exponential backoff; on its last attempt the
failure policy applies. It logs one line per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError
from .._options import TrimmerOptions
from .._store.leases import Leases
from .._trimming.background import Background
from .._trimming.folding import FoldDeferred, Folder
from .._trimming.path import StoredPath, deepest_summary, load_bodies, start_of
from .._trimming.path import store as store_path
from .._trimming.plan import fold_due
from .._trimming.summarizers import Summarizer

if TYPE_CHECKING:
    import procrastinate


from .._trimmer import Trimmer
from .._trimming.queue import (
    ATTEMPTS,
    BACKOFF,
    COMPACT_TASK,
    FOLD_TASK,
    HEARTBEAT_SECONDS,
    QUEUE,
    RECOVER_SECONDS,
    STALLED_SECONDS,
    apply_schema,
    conninfo,
    require_postgres,
)

log = logging.getLogger("context_trimmer.worker")


def rate_limited(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is an HTTP 429."""
    seen = 0
    while error is not None and seen < 10:
        if getattr(error, "status_code", None) == 429:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


@dataclass(frozen=True)
class FoldOutcome:
    """What a job did, as the worker logs it."""

    conversation: str | None
    span: str
    summary_tokens: int
    ms: float
    outcome: str

    def line(self) -> str:
        return (
            f"fold conversation={self.conversation} span={self.span} "
            f"summary_tokens={self.summary_tokens} ms={self.ms:.0f} outcome={self.outcome}"
        )


class FoldWorker:
    """Runs fold jobs with one summarizer, against the store of ``trimmer``."""

    def __init__(self, trimmer: Trimmer):
        self.trimmer = trimmer
        self._background = Background()  # never used: a job folds on the worker's thread

    @property
    def summarizer(self) -> Summarizer:
        return self.trimmer.summarizer

    def run(
        self, job: Mapping[str, Any], *, last_attempt: bool = True, owner: str | None = None
    ) -> FoldOutcome:
        """Fold the job's span unless it was folded meanwhile; FoldDeferred on a 429
        unless this is the job's last attempt. ``owner``: the fold lease's holder (see
        :func:`lease_owner`)."""
        began = time.perf_counter()
        options = TrimmerOptions(**job["options"], background=False)
        folder = Folder(self.trimmer._db, options, self.summarizer, self._background)
        folder.requeue = None if last_attempt else rate_limited
        stored = self._stored(job)
        start = job["start"]
        conversation = job["conversation"]
        if stored is None:
            return FoldOutcome(conversation, f"{start}-", 0, _ms(began), "skipped: history gone")
        with self.trimmer._db.reading() as connection:
            now = start_of(deepest_summary(connection, self.trimmer._summaries, stored))
        if now != start:
            outcome = f"skipped: span already folded (now starts at {now})"
            return FoldOutcome(conversation, f"{start}-", 0, _ms(began), outcome)
        if not fold_due(stored, start, folder.tail_tokens(stored, start), options):
            return FoldOutcome(conversation, f"{start}-", 0, _ms(began), "skipped: not due")
        result = folder.fold(stored, keep_last=options.keep_last, owner=owner)
        return self._outcome(
            stored, start, result.summary_id, result.failures, result.reason, began
        )

    def _stored(self, job: Mapping[str, Any]) -> StoredPath | None:
        trimmer = self.trimmer
        with trimmer._db.reading() as connection:
            messages = load_bodies(connection, job["head"])
        if not messages:
            return None
        path = trimmer._path(messages, job["model"], job["user"], job["conversation"])
        with trimmer._db.writing() as connection:
            return store_path(connection, path)  # stored already: writes nothing new

    def _outcome(
        self,
        stored: StoredPath,
        start: int,
        summary_id: int | None,
        failures: int,
        reason: str,
        began: float,
    ) -> FoldOutcome:
        conversation = stored.conversation_id
        if summary_id is None:
            outcome = f"skipped: {reason}" if not failures else f"failed: {reason}"
            return FoldOutcome(conversation, f"{start}-", 0, _ms(began), outcome)
        with self.trimmer._db.reading() as connection:
            summary = deepest_summary(connection, self.trimmer._summaries, stored)
        assert summary is not None
        tokens = stored.counter.text(summary.text)
        outcome = "fallback" if failures else "summarized"
        span = f"{start}-{summary.covers_depth + 1}"
        return FoldOutcome(conversation, span, tokens, _ms(began), outcome)

    def run_logged(
        self, job: Mapping[str, Any], *, last_attempt: bool, owner: str | None = None
    ) -> dict[str, Any]:
        """:meth:`run`, its line logged (a deferral too, then re-raised)."""
        try:
            outcome = self.run(job, last_attempt=last_attempt, owner=owner)
        except FoldDeferred as error:
            log.info(
                "fold conversation=%s span=%s- outcome=requeued (429: %s)",
                job["conversation"],
                job["start"],
                error,
            )
            raise
        log.info("%s", outcome.line())
        return asdict(outcome)


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


def worker_app(worker: FoldWorker) -> procrastinate.App:
    """The worker's procrastinate App, with the fold task registered."""
    db = worker.trimmer._db
    require_postgres(db, "context-trimmer worker")
    apply_schema(db)
    import procrastinate

    app: procrastinate.App = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=conninfo(db))
    )
    retry = procrastinate.RetryStrategy(
        max_attempts=ATTEMPTS - 1, exponential_wait=BACKOFF, retry_exceptions={FoldDeferred}
    )

    @app.task(name=FOLD_TASK, queue=QUEUE, retry=retry, pass_context=True)
    def fold(context: procrastinate.JobContext, /, **job: Any) -> dict[str, Any]:
        attempts = context.job.attempts if context.job else 0
        owner = lease_owner(context.job.id) if context.job and context.job.id else None
        return worker.run_logged(job, last_attempt=attempts >= ATTEMPTS - 1, owner=owner)

    del fold
    return app


def lease_owner(job_id: int) -> str:
    """The fold lease's holder for the job ``job_id``: dropped if the job stalls."""
    return f"fold-job:{job_id}"


def run_worker(
    app: procrastinate.App,
    worker: FoldWorker,
    *,
    concurrency: int = 1,
    wait: bool = True,
    install_signal_handlers: bool = True,
) -> None:
    """Run the queue's jobs (until stopped, or with ``wait=False`` those waiting now),
    beating every :data:`HEARTBEAT_SECONDS` and recovering stalled jobs at start-up and
    every :data:`RECOVER_SECONDS`."""

    async def main() -> None:
        async with app.open_async():
            await recover_stalled(app, worker)
            recovering = asyncio.create_task(_keep_recovering(app, worker)) if wait else None
            try:
                await app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=concurrency,
                    wait=wait,
                    install_signal_handlers=install_signal_handlers,
                    update_heartbeat_interval=HEARTBEAT_SECONDS,
                    stalled_worker_timeout=STALLED_SECONDS,
                )
            finally:
                if recovering is not None:
                    recovering.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await recovering

    asyncio.run(main())


async def _keep_recovering(app: procrastinate.App, worker: FoldWorker) -> None:
    while True:
        await asyncio.sleep(RECOVER_SECONDS)
        try:
            await recover_stalled(app, worker)
        except Exception:  # the database away for a moment: the next round tries again
            log.exception("could not look for stalled jobs")


async def recover_stalled(app: procrastinate.App, worker: FoldWorker) -> int:
    """Put back the jobs whose worker stopped beating (or was pruned); the count."""
    from procrastinate.exceptions import UniqueViolation
    from procrastinate.jobs import Status

    manager = app.job_manager
    stalled = await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=STALLED_SECONDS)
    leases = Leases(worker.trimmer._db)
    recovered = 0
    for job in stalled:
        assert job.id is not None
        dropped = await asyncio.to_thread(leases.release_all, lease_owner(job.id))
        try:
            await manager.retry_job(job)
            outcome = "put back on the queue"
        except UniqueViolation:  # a later job of this conversation waits: it folds instead
            await manager.finish_job(job, status=Status.FAILED, delete_job=False)
            outcome = "failed (a later job of its conversation waits)"
        except Exception as error:  # another worker recovered it first
            log.info("stalled job %s not recovered here: %s", job.id, error)
            continue
        recovered += 1
        conversation = job.task_kwargs.get("conversation")
        log.info(
            "stalled job %s (%s, conversation=%s; its worker stopped beating): %s, "
            "%d lease(s) dropped",
            job.id,
            job.task_name,
            conversation,
            outcome,
            dropped,
        )
    return recovered


def cron_every(seconds: float) -> str:
    """A cron line (procrastinate's, seconds as a 6th field) firing every ``seconds``:
    a divisor of a minute in seconds, of an hour in minutes, or of a day in hours."""
    whole = int(seconds)
    if whole == seconds and 0 < whole < 60 and 60 % whole == 0:
        return f"* * * * * */{whole}"
    if whole % 60 == 0 and 0 < whole // 60 < 60 and 60 % (whole // 60) == 0:
        return f"*/{whole // 60} * * * *"
    if whole % 3600 == 0 and 0 < whole // 3600 <= 24 and 24 % (whole // 3600) == 0:
        return f"0 */{whole // 3600} * * *"
    raise ConfigurationError(
        f"--compact-every must divide a minute (seconds), an hour (minutes) or a day "
        f"(hours), such as 30s, 10m or 6h; got {seconds:g} s"
    )


def add_compaction(app: procrastinate.App, every: float, compact: Callable[[], str]) -> None:
    """Run ``compact()`` (and log what it says) every ``every`` seconds on one of the
    workers (procrastinate defers each tick once, however many workers run)."""

    def compaction(timestamp: int) -> str:
        del timestamp
        said = compact()
        log.info("compact %s", said)
        return said

    task = app.task(name=COMPACT_TASK, queue=QUEUE, queueing_lock=COMPACT_TASK)(compaction)
    app.periodic(cron=cron_every(every), periodic_id="compact")(task)
