"""`python -m sleep_core.assets`: prepare the default model and the corpus, printing what it did."""

import sys
import time
from collections.abc import Callable

from . import ensure_corpus, ensure_default_model


def _run(ensure: Callable):
    """Call ensure with a printing progress callback; return its result and what it did."""
    steps, start = [], time.monotonic()

    def progress(message: str) -> None:
        steps.append(message)
        print(f"  {message}", flush=True)

    result = ensure(progress=progress)
    return result, f"prepared in {time.monotonic() - start:.0f} s" if steps else "already prepared"


def main() -> int:
    try:
        model, converted = _run(ensure_default_model)
        corpus, built = _run(ensure_corpus)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"default model: {converted} ({model})")
    print(f"corpus: {built} ({corpus.covariance_text.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
