"""What every benchmark shares: the model, the fact sets, control prompts, output as JSON and PNG."""
import argparse
import json
import logging
import random
import resource
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from ..config import MemoryConfig
from ..editing.hparams import EditConfig
from ..memory.facts import Fact
from ..paths import data_dir

QUESTIONS = {
    "lives in": "Where does {} live?",
    "works as": "What does {} work as?",
    "'s favorite color is": "What is {}'s favorite color?",
    "'s favorite food is": "What is {}'s favorite food?",
    "is aged": "How old is {}?",
    "speaks": "What language does {} speak?",
    "studied": "What did {} study?",
    "graduated in": "What year did {} graduate in?",
    "is allergic to": "What is {} allergic to?",
    "is learning": "What is {} learning?",
}

# Facts the unedited default model already completes; they must survive every edit (specificity).
CONTROL_PROMPTS = [
    "The capital of France is", "The capital of Japan is", "The capital of Italy is", "The capital of Spain is",
    "The Eiffel Tower is located in", "Water is made of hydrogen and", "The largest planet in the solar system is",
    "The first president of the United States was", "The chemical symbol for gold is", "The sun rises in the",
    "A week has seven", "The opposite of hot is", "Shakespeare wrote", "The currency of the United Kingdom is the",
    "Mount Everest is in", "The Great Wall is in", "Albert Einstein developed the theory of", "Bananas are",
    "The color of the sky is", "Paris is the capital of",
]


def seed_pool(n: int, seed: int) -> list[Fact]:
    """`n` facts from the reference implementation's 500-fact pool, shuffled by `seed`, with chat questions."""
    rows = json.loads((data_dir() / "seed_fact_pool_500.json").read_text())
    random.Random(seed).shuffle(rows)
    seen, facts = set(), []
    for row in rows:
        if (row["subject"], row["relation"]) in seen:
            continue
        seen.add((row["subject"], row["relation"]))
        facts.append(Fact(row["subject"], row["relation"], row["object"],
                          (QUESTIONS[row["relation"]].format(row["subject"]),)))
    return facts[:n]


def load_model(path: str | None, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..assets.model import ensure_default_model
    folder = path or ensure_default_model()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    return model, tokenizer


def model_name(model) -> str:
    return str(model.config._name_or_path).rstrip("/").split("/")[-1]


def bench_config(store: Path, mode: str = "constrained", edit: EditConfig | None = None, **kwargs) -> MemoryConfig:
    """A memory for a benchmark: its own store, no automatic sleep, its own copy of the edit settings."""
    return MemoryConfig(store_dir=store, mode=mode, auto_sleep=False, edit=replace(edit or EditConfig()), **kwargs)


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m sleep_core.bench {name}", description=doc)
    p.add_argument("--model", help="a local Hugging Face folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--plot", type=Path, help="write a PNG here (default: bench-<name>.png in the current folder)")
    p.add_argument("--threads", type=int, default=2)
    return p


def setup(args) -> Path:
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return Path(tempfile.mkdtemp(prefix="sleeping-llm-bench-"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def emit(result: dict, args, plot) -> None:
    """Print the JSON result and draw its plot."""
    target = args.plot or Path(f"bench-{result['benchmark']}.png")
    try:
        plot(result, target)
        result["plot"] = str(target)
    except ImportError:
        logging.warning("matplotlib is not installed; no plot written")
    print(json.dumps(result, indent=None if args.json else 2))


def line_plot(target, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str) -> None:
    """One line per named (x, y) series, y from 0 to 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.05), title=title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
