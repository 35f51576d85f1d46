"""Injection off the chat's critical path: a queue of fact ids and one worker thread."""
import contextlib
import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


class InjectionWorker:
    """Runs `inject(fact_id)` for queued ids, one at a time, in a daemon thread. Every queued id is a pending
    fact in the store, so an id the worker never reaches is queued again when the store is next opened."""

    def __init__(self, inject: Callable[[int], None]):
        self._inject = inject
        self._stopping = False
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sleeping-llm-inject", daemon=True)
        self._thread.start()

    def put(self, fact_id: int) -> None:
        if not self._stopping:
            self._queue.put(fact_id)

    def _run(self) -> None:
        while (fact_id := self._queue.get()) is not None:
            try:
                self._inject(fact_id)
            except Exception:
                log.exception("injecting fact %s failed; it stays pending and is retried on the next open", fact_id)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every queued fact has been handled (or `timeout` seconds passed: False)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    @property
    def busy(self) -> bool:
        return self._queue.unfinished_tasks > 0

    def stop(self) -> None:
        """Let the fact in hand finish and leave the queued ones pending: the model may be going away, and a
        store closed under a running injection would lose its edit."""
        self._stopping = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
                self._queue.task_done()
        if self.busy:
            log.info("waiting for the injection in progress to finish")
        self._queue.put(None)
        self._thread.join()
