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
from tqdm import tqdm

from ..config import MemoryConfig
from ..editing.hparams import EditConfig
from ..eval import known_facts, knows, mentions
from ..cycle.sleep import SleepReport
from ..facade import Memory
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

def known_to(model, tokenizer) -> list[tuple[str, str]]:
    """The common-knowledge facts the unedited model completes; specificity is the share it still does."""
    pairs = known_facts()
    return [pair for pair, known in zip(pairs, knows(model, tokenizer, pairs)) if known]


def still_known(model, tokenizer, pairs: list[tuple[str, str]], lenient: bool = False) -> float:
    """Share of `pairs` whose greedy completion begins with the answer (lenient: mentions it in 8 tokens)."""
    return sum((mentions if lenient else knows)(model, tokenizer, pairs)) / max(len(pairs), 1)


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


DTYPES = ("float32", "bfloat16", "float16")
QUANTIZE = ("none", "nf4", "fp4", "int8")
BACKENDS = ("torch", "mlx")


def quantization(quantize: str, dtype: str):
    """The BitsAndBytesConfig for `quantize` (4-bit layers compute in `dtype`), None for unquantized."""
    if quantize == "none":
        return None
    from transformers import BitsAndBytesConfig
    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize,
                              bnb_4bit_compute_dtype=getattr(torch, dtype))


def model_folder(path: str | None) -> Path:
    from ..assets.model import ensure_default_model
    return Path(path) if path else ensure_default_model()


def load_model(path: str | None, dtype: str = "float32", quantize: str = "none", backend: str = "torch",
               device: str = "cpu"):
    """The model in `dtype` on `device` with its Hugging Face tokenizer: transformers, its linear layers
    quantized by bitsandbytes unless `quantize` is 'none', or mlx-lm."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device")
    folder = model_folder(path)
    if backend == "mlx":
        from ..model.backend import hf_tokenizer
        from ..model.mlx import load
        model, tokenizer = load(folder, dtype)
        return model, hf_tokenizer(tokenizer)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    quantized = quantization(quantize, dtype)
    placed = {} if quantized is None else {"quantization_config": quantized}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), device_map=device,
                                                 **placed).eval()
    return model, tokenizer


def model_name(model) -> str:
    return str(model.config._name_or_path).rstrip("/").split("/")[-1]


def bench_config(store: Path, mode: str = "constrained", edit: EditConfig | None = None, **kwargs) -> MemoryConfig:
    """A memory for a benchmark: its own store, no automatic sleep, its own copy of the edit settings."""
    return MemoryConfig(store_dir=store, mode=mode, auto_sleep=False, edit=replace(edit or EditConfig()), **kwargs)


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, iterable=None) -> tqdm:
    """A bar on stderr (stdout is the JSON result's), drawn only on a terminal; over `iterable` if given."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=None, leave=False,
                dynamic_ncols=True)


def open_memory(model, tokenizer, config: MemoryConfig) -> Memory:
    """A benchmark's memory with its layers' covariance at hand (measured with a bar the first time, then cached)."""
    memory = Memory.open(model, tokenizer, config)
    with progress_bar(config.edit.cov_tokens, "covariance", "tok") as bar:
        memory.priors(lambda seen, total: bar.update(seen - bar.n))
    return memory


def sleep_showing(memory: Memory, bar: tqdm) -> SleepReport:
    """`memory.sleep()`, its steps shown beside `bar`."""
    return memory.sleep(lambda step: bar.set_postfix_str(f"sleep: {step.message}"))


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m sleep_core.bench {name}", description=doc)
    p.add_argument("--model", help="a local Hugging Face folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--plot", type=Path, help="write a PNG here (default: bench-<name>.png in the current folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, ... (torch backend)")
    p.add_argument("--step-precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="precision of the target optimisation's Adam steps (auto: bfloat16 on a CPU that has it)")
    p.add_argument("--jitter", type=float, default=EditConfig.v_jitter,
                   help="targets found under a random error of this share of their length (EditConfig.v_jitter)")
    return p


def edit_settings(args) -> EditConfig:
    """The default edit settings, with the command line's step precision and jitter."""
    return EditConfig(v_bf16={"auto": None, "float32": False, "bfloat16": True}[args.step_precision],
                      v_jitter=args.jitter)


def model_options(p: argparse.ArgumentParser) -> None:
    """--backend, --dtype and --quantize: how the model is loaded."""
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--quantize", choices=QUANTIZE, default="none", help="bitsandbytes: 4-bit nf4 or fp4, or int8")


def check_backend(p: argparse.ArgumentParser, args) -> None:
    if args.backend == "mlx" and args.quantize != "none":
        p.error("--quantize loads the model with bitsandbytes, which needs --backend torch")


def setup(args) -> Path:
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, stream=sys.stderr)
    if getattr(args, "backend", "torch") == "mlx":
        from ..model.mlx import blas_threads     # before anything imports mlx (see model/mlx/blas.py)
        blas_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if store := getattr(args, "store", None):
        store.mkdir(parents=True, exist_ok=True)
        return store
    return Path(tempfile.mkdtemp(prefix="sleeping-llm-bench-"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory now (Linux); elsewhere the peak so far."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return peak_rss_mb()
    return int(statm.read_text().split()[1]) * resource.getpagesize() / 2 ** 20


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def emit(result: dict, args, plot) -> None:
    """Print the JSON result and draw its plot."""
    target = args.plot or Path(f"bench-{result['benchmark']}.png")
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
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
