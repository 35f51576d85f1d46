"""Capture module inputs and outputs with hooks that are always removed (like baukit's Trace)."""
from contextlib import contextmanager
from typing import Iterator

import torch


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the last needed module has run."""


@contextmanager
def capture(inputs: dict[str, torch.nn.Module] = {}, outputs: dict[str, torch.nn.Module] = {},
            stop_after: torch.nn.Module | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record `inputs[name]`'s first input and `outputs[name]`'s output into the yielded dict."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep_input(name):
        return lambda module, args: seen.__setitem__(name, args[0])

    def keep_output(name):
        return lambda module, args, out: seen.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    def stop(module, args, out):
        raise StopForward

    try:
        handles += [m.register_forward_pre_hook(keep_input(n)) for n, m in inputs.items()]
        handles += [m.register_forward_hook(keep_output(n)) for n, m in outputs.items()]
        if stop_after is not None:
            handles.append(stop_after.register_forward_hook(stop))
        yield seen
    finally:
        for h in handles:
            h.remove()


def run_until_stop(model: torch.nn.Module, **batch) -> None:
    """Run the model forward; a `capture(stop_after=...)` hook may end it early."""
    try:
        model(**batch, use_cache=False)
    except StopForward:
        pass
