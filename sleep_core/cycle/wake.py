"""Injection off the chat's critical path: a queue of fact ids and one worker thread."""
import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)

# Facts queued together (one message's, an import's) are written in one solve, up to this many: on both threads
# of a 2-core CPU, 8 facts of the seed pool took 2.4-2.7 s each against 5.0 s one at a time, but the solve holds
# the weights (so a reply waits) for its whole 20 s.
MAX_TOGETHER = 8


class InjectionWorker:
    """Runs `inject(fact_ids)` in a daemon thread for the ids queued meanwhile, up to `most` at a time; a batch that
    fails is retried one fact at a time, so one bad fact does not hold the others back."""

    def __init__(self, inject: Callable[[list[int]], None], most: int = MAX_TOGETHER):
        self._inject, self._most = inject, most
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sleeping-llm-inject", daemon=True)
        self._thread.start()

    def put(self, fact_id: int) -> None:
        self._queue.put(fact_id)

    def _run(self) -> None:
        running = True
        while running:
            taken = [self._queue.get()]
            while taken[-1] is not None and len(taken) < self._most:
                try:
                    taken.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            running = taken[-1] is not None
            try:
                if ids := [i for i in taken if i is not None]:
                    self._write(ids)
            finally:
                for _ in taken:
                    self._queue.task_done()

    def _write(self, ids: list[int]) -> None:
        try:
            self._inject(ids)
        except Exception:
            if len(ids) == 1:
                log.exception("injecting fact %s failed; it stays pending and is retried on the next open", ids[0])
                return
            log.warning("injecting facts %s together failed; now one at a time", ids, exc_info=True)
            for fact_id in ids:
                self._write([fact_id])

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
