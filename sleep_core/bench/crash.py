"""`crash`: SIGKILL a process in the middle of each memory operation, reopen the store, check nothing was lost.

Every run copies a prepared store, performs one operation in a fresh child process and kills it, either a
delay into the operation (swept over its measured duration) or the moment the store's files change for
the n-th time (its commit points). Another fresh process then reopens the store and checks that it opens
cleanly; that the live weights equal pristine + Σ a bᵀ of the committed edit files bitwise, recomputed
from the files rather than by the ledger, before and after pending facts are injected; that a Memory
rebuilt from the store on a third copy of the model agrees; that no committed fact was lost, an import
landed whole or not at all, and a forgotten fact's text is gone from every file.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils.logging import disable_progress_bar

from ..assets.model import ensure_default_model
from ..config import MemoryConfig
from ..editing.hparams import EditConfig
from ..facade import Memory
from ..memory.facts import Fact, FactEdit
from ..memory.store import EXPORT_FORMAT, EXPORT_VERSION, now
from ..model.adapter import ModelAdapter
from .common import parser, setup

OPERATIONS = ("open", "inject", "sleep", "import", "export", "forget", "forget_everything")
BASE = [Fact("Aria", "lives in", "Portland", ("Where does Aria live?",)),
        Fact("my dog", "'s name is", "Quillbert", ("What is my dog's name?",)),
        Fact("Kaito", "works as", "cartographer", ("What does Kaito work as?",))]
NEW = Fact("my sister", "'s name is", "Ottoline", ("What is my sister's name?",))
IMPORTED = [Fact("Nadia", "speaks", "Portuguese", ("What language does Nadia speak?",)),
            Fact("my cat", "'s name is", "Pumpernickel", ("What is my cat's name?",))]
FORGOTTEN = BASE[1]
TINY_EDIT = {"cov_tokens": 3000, "v_steps": 4}


@dataclass
class Target:
    """What every child process loads: a model folder (None: the tiny random Llama) and the edit settings."""
    tokenizer: str
    model: str | None = None
    edit: dict = field(default_factory=lambda: dict(TINY_EDIT))


def tiny_llama(vocab_size: int):
    """The tests' tiny random Llama: the same seed gives the same pristine weights in every process."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=256)).eval()


def load(target: Target, tokenizer=None):
    torch.set_num_threads(1)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(target.tokenizer)
    if target.model is None:
        return tiny_llama(len(tokenizer)), tokenizer
    disable_progress_bar()          # its multiprocessing lock would leak from every killed child
    return AutoModelForCausalLM.from_pretrained(target.model, dtype=torch.float32).eval(), tokenizer


def open_memory(target: Target, store: Path, model, tokenizer, weight_lock=None) -> Memory:
    config = MemoryConfig(store_dir=store, edit=EditConfig(**target.edit))
    return Memory.open(model, tokenizer, config, **({"weight_lock": weight_lock} if weight_lock else {}))


def text(fact: Fact) -> str:
    return f"{fact.prompt} {fact.object}"


def document(facts: list[Fact], fingerprint: str) -> dict:
    """An export holding `facts`, as `Memory.export_json` writes it."""
    rows = [{"subject": f.subject, "relation": f.relation, "object": f.object, "questions": list(f.questions),
             "source_text": text(f) + ".", "created_at": now(), "pinned": False} for f in facts]
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": fingerprint, "exported_at": now(),
            "facts": rows}


# the operations, each in a child process that is killed
def _inject(memory: Memory, say) -> None:
    say("queued", memory.add(NEW, text(NEW) + "."))
    memory.wait_idle()


def _sleep(memory: Memory, say) -> None:
    say("slept", memory.sleep().committed)


def _import(memory: Memory, say) -> None:
    say("imported", memory.import_json(document(IMPORTED, memory.fingerprint)))
    memory.wait_idle()


def _export(memory: Memory, say) -> None:
    path = memory.store.folder.parent / "export.json"
    path.with_suffix(".tmp").write_text(json.dumps(memory.export_json()))
    path.with_suffix(".tmp").replace(path)


def _forget(memory: Memory, say) -> None:
    memory.forget(next(r.id for r in memory.facts() if text(r.fact) == text(FORGOTTEN)))
    say("forgotten")


def _forget_everything(memory: Memory, say) -> None:
    memory.forget_everything()
    say("forgotten")


STEPS = {"inject": _inject, "sleep": _sleep, "import": _import, "export": _export, "forget": _forget,
         "forget_everything": _forget_everything}


def _operate(target: Target, store: Path, op: str, conn) -> None:
    """Child: load the model, say "begin", run `op`, say "end" (or "error")."""
    say = lambda *message: conn.send(message)
    try:
        model, tokenizer = load(target)
        if op == "open":
            say("begin")
            open_memory(target, store, model, tokenizer).close()
        else:
            memory = open_memory(target, store, model, tokenizer)
            memory.priors()
            say("begin")
            STEPS[op](memory, say)
            memory.close()
        say("end")
    except Exception as error:
        say("error", f"{type(error).__name__}: {error}")


def _prepare(target: Target, store: Path) -> None:
    """Child: the store every run starts from: BASE injected, the first fact forced degraded (zero columns)."""
    memory = open_memory(target, store, *load(target))
    ids = memory.inject_now(BASE)
    edit = memory.ledger.columns[ids[0]]
    weak = FactEdit({l: torch.zeros_like(a) for l, a in edit.a.items()}, edit.b, edit.k, edit.delta, edit.prob)
    memory.ledger.set(ids[0], weak)
    memory.ledger.rebuild()
    memory.store.save_edits({ids[0]: weak})
    memory.close()


# the check, in another fresh child
def committed(folder: Path) -> tuple[dict[int, dict], Counter, list[str]]:
    """Edit tensors of every committed row read straight from the files, row counts by status, bad files."""
    if not (folder / "memory.sqlite").exists():
        return {}, Counter(), []
    db = sqlite3.connect(folder / "memory.sqlite")
    try:
        rows = db.execute("SELECT id, status, edit_file, edit_sha256 FROM facts").fetchall()
        reports = db.execute("SELECT count(*) FROM reports").fetchone()[0]
    except sqlite3.OperationalError:          # killed before the tables existed
        return {}, Counter(), []
    finally:
        db.close()
    edits, bad = {}, []
    for fact_id, _, name, sha in (r for r in rows if r[2]):
        path = folder / "edits" / name
        if not path.exists() or _sha256(path) != sha:
            bad.append(name)
        else:
            edits[fact_id] = load_file(str(path))
    return edits, Counter(status for _, status, _, _ in rows) + Counter(reports=reports), bad


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected(adapter: ModelAdapter, pristine: dict, edits: dict[int, dict]) -> dict[int, torch.Tensor]:
    """pristine + Σ a bᵀ over the committed files in id order."""
    out = {}
    for l, base in pristine.items():
        ids = sorted(edits)
        if not ids:
            out[l] = base
            continue
        A = torch.stack([edits[i][f"a.{l}"] for i in ids], 1)
        B = torch.stack([edits[i][f"b.{l}"] for i in ids], 1)
        out[l] = adapter.to_stored(adapter.as_matrix(base) + A @ B.T, like=base)
    return out


def _live(memory: Memory) -> dict[int, torch.Tensor]:
    return {l: memory.adapter.read_weight(l).clone() for l in memory.adapter.layers}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[l], b[l]) for l in a)


def check(target: Target, store: Path, keep: set[str], gone: set[str], whole: list[set[str]]) -> dict:
    """Reopen `store` and compare it with what must have survived the kill."""
    model, tokenizer = load(target)
    adapter = ModelAdapter(model)
    folder = store / adapter.fingerprint()
    pristine = {l: adapter.read_weight(l).clone() for l in adapter.layers}
    edits, counts, bad = committed(folder)
    gate = threading.RLock()        # held here while the reopened Memory re-applies the store: its worker waits
    with gate:
        memory = open_memory(target, store, model, tokenizer, weight_lock=lambda: gate)
        reloaded = _same(_live(memory), expected(adapter, pristine, edits))
    memory.wait_idle(600)
    result = _verdict(memory, expected(adapter, pristine, committed(folder)[0]), keep, gone, whole)
    result.update(state=", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "empty",
                  corrupt=bad + result["corrupt"], weights_mismatch=result["weights_mismatch"] or not reloaded)
    final = _live(memory)
    memory.close()
    rebuilt = open_memory(target, store, load(target, tokenizer)[0], tokenizer)
    result["weights_mismatch"] |= not _same(final, _live(rebuilt))
    rebuilt.close()
    return result


def _verdict(memory: Memory, want: dict, keep: set[str], gone: set[str], whole: list[set[str]]) -> dict:
    """After recovery: the weights match the files, and every fact is where it must be."""
    after, _, bad = committed(memory.store.folder)
    records = memory.facts()
    active = {text(r.fact) for r in records if r.id in memory.ledger.columns}
    return {"problems": memory.problems, "corrupt": bad, "weights_mismatch": not _same(_live(memory), want),
            "lost": sorted(keep - active), "not_forgotten": sorted(gone & {text(r.fact) for r in records}),
            "partial": [sorted(group & active) for group in whole if 0 < len(group & active) < len(group)],
            "stuck": [r.id for r in records
                      if r.status == "pending" or (r.status in ("healthy", "degraded")) != (r.id in after)],
            "leaks": _leaks(memory.store.folder, gone)}


def _leaks(folder: Path, gone: set[str]) -> list[str]:
    """Files of the store that still contain a forgotten fact's object (case-insensitively)."""
    markers = [t.rsplit(" ", 1)[-1].lower().encode() for t in gone]
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            and any(m in p.read_bytes().lower() for m in markers)]


def _check_child(target: Target, store: Path, expect: tuple, conn) -> None:
    try:
        conn.send(check(target, store, *expect))
    except Exception as error:
        conn.send({"error": f"{type(error).__name__}: {error}"})


def expectations(op: str, said: set[str]) -> tuple[set[str], set[str], list[set[str]]]:
    """(facts that must be active, facts that must be gone, groups that must land whole) after a kill."""
    base = {text(f) for f in BASE} if op != "open" else set()
    if op == "inject":
        return base | ({text(NEW)} if "queued" in said else set()), set(), []
    if op == "import":
        imported = {text(f) for f in IMPORTED}
        return base | (imported if "imported" in said else set()), set(), [imported]
    if op == "forget":
        return base - {text(FORGOTTEN)}, {text(FORGOTTEN)} if "forgotten" in said else set(), []
    if op == "forget_everything":
        return set(), base if "forgotten" in said else set(), [base]
    return base, set(), []


# the parent: start, watch, kill, check
def _signature(store: Path) -> tuple:
    """What changes at each commit point: the edit files, and the sizes of the database and its WAL."""
    files = []
    for folder in (store, *store.glob("*/"), *store.glob("*/edits")):
        try:
            with os.scandir(folder) as entries:
                files += [(e.path, e.stat(follow_symlinks=False).st_size) for e in entries]
        except FileNotFoundError:        # removed while listed: the next look sees the new state
            pass
    return tuple(sorted(files))


def _watch(child, reader, store: Path, delay: float, change: int) -> tuple[list[tuple], float, int]:
    """Kill `child` `delay` seconds after it says "begin", or at the `change`-th change of the store's files.

    Returns what it said, the seconds from "begin" and the changes seen; the kill, when it came first
    (the child said neither "end" nor "error"), is the last message: ("killed",)."""
    said = [_receive(reader)]
    if said[0][0] != "begin":
        raise RuntimeError(f"the child failed before the operation: {said[0]}")
    start, last, changes = time.perf_counter(), _signature(store), 0
    while said[-1][0] not in ("end", "error", "died"):
        if reader.poll():
            said.append(_receive(reader))
            continue
        signature = _signature(store)
        changes, last = changes + (signature != last), signature
        if time.perf_counter() - start >= delay or changes >= change:
            child.kill()
            child.join()
            while (message := _receive(reader))[0] != "died":
                said.append(message)
            said += [] if {"end", "error"} & {m[0] for m in said} else [("killed",)]
            break
        time.sleep(0.0005)
    return said, time.perf_counter() - start, changes


def _receive(reader) -> tuple:
    try:
        return reader.recv()
    except EOFError:
        return ("died",)


def run_once(ctx, target: Target, template: Path, work: Path, op: str, delay: float = float("inf"),
             change: int = 1 << 30) -> dict:
    """One run of `op` on a copy of `template`, killed at the trigger, then checked in a fresh process."""
    store = work / "memory"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, store)
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_operate, args=(target, store, op, writer), daemon=True)
    child.start()
    writer.close()
    said, seconds, changes = _watch(child, reader, store, delay, change)
    child.join()
    result = _in_child(ctx, _check_child, target, store, expectations(op, {m[0] for m in said}))
    errors = [m[-1] for m in said if m[0] in ("error", "died")]
    return {**result, **({"error": errors[0]} if errors else {}), "killed": said[-1] == ("killed",),
            "seconds": seconds, "changes": changes}


def _in_child(ctx, fn, *args):
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=fn, args=(*args, writer), daemon=True)
    child.start()
    writer.close()
    try:
        return reader.recv()
    finally:
        child.join()


def _prepare_child(target: Target, store: Path, conn) -> None:
    _prepare(target, store)
    conn.send(True)


def prepare(ctx, target: Target, work: Path) -> dict[str, Path]:
    """The starting stores: empty for "open", BASE with one degraded fact for every other operation."""
    (work / "empty").mkdir(parents=True, exist_ok=True)
    _in_child(ctx, _prepare_child, target, work / "base")
    return {op: work / ("empty" if op == "open" else "base") for op in OPERATIONS}


def context():
    """Children forked from a server that has imported torch once: each starts in a fraction of a second."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sleep_core.bench.crash"])
    return ctx


def triggers(kills: int, seconds: float, changes: int) -> list[tuple[float, int]]:
    """Half the kills at each n-th change of the store (spread over the changes seen), the rest swept in time."""
    at_change = min(changes, kills // 2)
    delays = kills - at_change
    by_change = [(float("inf"), 1 + i * changes // at_change) for i in range(at_change)]
    return by_change + [(seconds * (i + 0.5) / delays, 1 << 30) for i in range(delays)]


def failed(run: dict) -> bool:
    return bool(run.get("error") or run["weights_mismatch"] or run["lost"] or run["not_forgotten"] or run["partial"]
                or run["stuck"] or run["leaks"] or run["corrupt"] or run["problems"])


def kill_at(ctx, target: Target, template: Path, work: Path, op: str, delay: float, change: int) -> list[dict]:
    """Runs until one is killed: a run that ended before its trigger is repeated at half its time (4 tries)."""
    runs = [run_once(ctx, target, template, work, op, delay, change)]
    while not runs[-1]["killed"] and len(runs) < 4:
        runs.append(run_once(ctx, target, template, work, op, runs[-1]["seconds"] / 2))
    return runs


def run_operation(ctx, target: Target, template: Path, work: Path, op: str, kills: int) -> dict:
    """A full run of `op` to measure it, then `kills` runs killed at spread-out points."""
    calibration = run_once(ctx, target, template, work, op)
    runs = [calibration] + [run for delay, change in triggers(kills, calibration["seconds"], calibration["changes"])
                            for run in kill_at(ctx, target, template, work, op, delay, change)]
    killed = [r for r in runs if r.get("killed")]
    return {"kills": len(killed), "recovered": sum(not failed(r) for r in killed), "runs_checked": len(runs),
            "facts_lost": sum(len(r.get("lost", ())) for r in runs),
            "weights_mismatch": sum(bool(r.get("weights_mismatch")) for r in runs),
            "failures": [r for r in runs if failed(r)],
            "seconds": round(calibration["seconds"], 3), "commit_points": calibration["changes"],
            "states_after_kill": dict(Counter(r.get("state", "?") for r in killed))}


def campaign(target: Target, operations: tuple[str, ...], kills: int, work: Path, say=lambda op, r: None) -> dict:
    ctx = context()
    templates = prepare(ctx, target, work / "templates")
    per_op = {}
    for op in operations:
        per_op[op] = run_operation(ctx, target, templates[op], work / "run", op, kills)
        say(op, per_op[op])
    totals = {k: sum(r[k] for r in per_op.values())
              for k in ("kills", "recovered", "facts_lost", "weights_mismatch", "runs_checked")}
    return {"benchmark": "crash", **totals, "failures": sum(len(r["failures"]) for r in per_op.values()),
            "operations": per_op}


def add_arguments(p) -> None:
    p.add_argument("--kills", type=int, default=10, help="kills per operation (default 10)")
    p.add_argument("--operations", default=",".join(OPERATIONS), help=f"comma-separated, of {OPERATIONS}")
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=True,
                   help="the tiny random Llama of the tests (default); --no-tiny: --model or the default model")


def main(argv: list[str]) -> int:
    p = parser("crash", __doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    work = setup(args)
    folder = str(args.model or ensure_default_model())
    target = Target(folder) if args.tiny else Target(folder, folder, {})
    clock = time.perf_counter()

    def report(op: str, result: dict) -> None:
        if not args.json:
            print(f"{op}: {result['kills']} kills, {result['recovered']} recovered", flush=True)
    result = campaign(target, tuple(args.operations.split(",")), args.kills, work, report)
    result.update(model="tiny-llama" if args.tiny else Path(folder).name, seconds=round(time.perf_counter() - clock, 1))
    print(json.dumps(result, indent=None if args.json else 2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if result["failures"] == 0 and result["recovered"] == result["kills"] else 1
