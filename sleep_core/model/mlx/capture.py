"""Capture module inputs and outputs in an mlx-lm model, which has no hooks: the module is swapped for a Tap
that records and calls it, and always put back. MLX is lazy, so a forward whose output is never evaluated
computes only what the captured arrays need: a tap at layer 12 runs layers 0-12, not the head."""
from contextlib import contextmanager
from typing import Iterator

Spot = tuple[object, str | int]        # (parent, key): a module is parent[key], in an nn.Module or a layer list


class Tap:
    """Stands in for `module`, recording its first input or its output in `seen[name]`."""

    def __init__(self, module, seen: dict, name, output: bool):
        self.module, self.seen, self.name, self.output = module, seen, name, output

    def __getattr__(self, name: str):      # the model reads its blocks' settings (use_sliding, ...)
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    def __call__(self, x, *args, **kwargs):
        out = self.module(x, *args, **kwargs)
        self.seen[self.name] = out if self.output else x
        return out


@contextmanager
def capture(inputs: dict[object, Spot] = {}, outputs: dict[object, Spot] = {}) -> Iterator[dict]:
    """Record the first input of each module at `inputs[name]` and the output of each at `outputs[name]`."""
    seen: dict = {}
    swapped = []
    try:
        for spots, output in ((inputs, False), (outputs, True)):
            for name, (parent, key) in spots.items():
                swapped.append((parent, key, parent[key]))
                parent[key] = Tap(parent[key], seen, name, output)
        yield seen
    finally:
        for parent, key, module in reversed(swapped):
            parent[key] = module
