"""Injection off the chat's critical path: a queue of fact ids and one worker thread."""
import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


class InjectionWorker:
    """Runs `inject(fact_id)` for queued ids, one at a time, in a daemon thread."""

    def __init__(self, inject: Callable[[int], None]):
        self._inject = inject
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sleeping-llm-inject", daemon=True)
        self._thread.start()

    def put(self, fact_id: int) -> None:
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
        self._queue.put(None)
        self._thread.join(timeout=60)
