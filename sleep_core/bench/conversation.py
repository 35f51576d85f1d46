"""`conversation`: a conversational set (the reference's or one of ours, `SETS`) played as chat turns, then chat
recall after a sleep and again after a restart (a fresh model object, the same store, an empty context)."""
import json
import logging
import random
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..editing.hparams import EditConfig
from ..eval import chat_answers
from ..facade import Memory
from ..paths import data_dir
from .common import bench_config, edit_settings, emit, load_model, model_name, open_memory, parser, peak_rss_mb, setup

log = logging.getLogger(__name__)


# the reference's set, and five written for this project (more relatives and pronouns across messages; a life
# history; who I am and how I live; beliefs, relationships and habits; family place, temperament and daily life)
SETS = {
    "seed": "seed_conversation_facts.json",
    "more": "conversation_more.json",
    "life": "conversation_life.json",
    "about": "conversation_about.json",
    "habits": "conversation_habits.json",
    "traits": "conversation_traits.json",
}


def conversation_set(groups: int | None = None, name: str = "seed", seed: int = 0) -> tuple[list[dict], list[str]]:
    """The first `groups` fact groups (statements and recall questions) and the distractor turns of set `name`;
    a seed other than 0 tells the groups in another order (each group's statements keep theirs, as its pronouns
    and names need), so that runs differ in every float path the way a new draw of facts would."""
    data = json.loads((data_dir() / SETS[name]).read_text())
    chosen = data["facts"][:groups]
    if seed:
        random.Random(seed).shuffle(chosen)
    return chosen, data["distractor_conversation"]


def mentions(answer: str, word: str) -> bool:
    """`word` starts a word of `answer` ("draw" in "drawing"), a number a whole one ("6", not "5" in "15" nor "6" in
    "63" or "6.6"); "LA" matches only in capitals."""
    before, after = (r"(?<!\d[.,])", r"(?!\d)(?![.,]\d)") if word[-1:].isdigit() else ("", "")
    return re.search(rf"{before}\b{re.escape(word)}{after}", answer, 0 if word.isupper() else re.IGNORECASE) is not None


def ask(model, tokenizer, questions: list[dict]) -> list[dict]:
    """Each question's answer: right when it mentions an expected word and no forbidden one."""
    answers = chat_answers(model, tokenizer, [q["question"] for q in questions])
    rows = []
    for q, answer in zip(questions, answers):
        expected = any(mentions(answer, w) for w in q["expected"])
        forbidden = [w for w in q["forbidden"] if mentions(answer, w)]
        rows.append({"question": q["question"], "answer": answer, "right": expected and not forbidden,
                     "forbidden": forbidden})
    return rows


def summary(rows: list[dict]) -> tuple[float, int]:
    """Share of right answers and the number of answers with a forbidden word."""
    return sum(r["right"] for r in rows) / max(len(rows), 1), sum(bool(r["forbidden"]) for r in rows)


def play(memory: Memory, groups: list[dict], distractors: list[str]) -> list[dict]:
    """Every statement, then every distractor turn, as a user message; what each taught. Each turn's facts are
    written before the next turn, as between a user's messages, so "Andre" later resolves to "my son"."""
    learned = []
    for turn in [s for g in groups for s in g["statements"]] + distractors:
        accepted = memory.learn(turn, "user").accepted
        memory.wait_idle()
        learned.append({"message": turn, "facts": [f"{c.fact.prompt} {c.fact.object}" for c in accepted]})
    return learned


def conversation(model, tokenizer, store: Path, reload: Callable[[], object], groups: int | None = None,
                 edit: EditConfig | None = None, set_name: str = "seed", seed: int = 0, **config) -> dict:
    """`reload` gives a fresh model object with the pristine weights, as a restarted process would load;
    `config`: further MemoryConfig fields."""
    facts, distractors = conversation_set(groups, set_name, seed)
    questions = [q for g in facts for q in g["recall_questions"]]
    before = ask(model, tokenizer, questions)
    memory = open_memory(model, tokenizer, bench_config(store, "constrained", edit, **config))
    learned = play(memory, facts, distractors)
    report = memory.sleep()
    after = ask(model, tokenizer, questions)
    memory.close()
    fresh = reload()
    memory = Memory.open(fresh, tokenizer, bench_config(store, "constrained", edit, **config))
    try:
        restarted = ask(fresh, tokenizer, questions)
    finally:
        memory.close(restore_weights=True)
    (recall, hits), (recall_restart, hits_restart) = summary(after), summary(restarted)
    return {"benchmark": "conversation", "set": set_name, "groups": len(facts), "questions": len(questions),
            "chat_recall_before": summary(before)[0], "chat_recall": recall, "chat_recall_after_restart":
            recall_restart, "forbidden_hits": hits, "forbidden_hits_after_restart": hits_restart,
            "facts_learned": sum(len(t["facts"]) for t in learned), "sleep": report.reason,
            "sleep_seconds": report.seconds, "audit": report.facts, "turns": learned, "answers": after,
            "answers_after_restart": restarted}


def plot(result: dict, target) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = ["before learning", "after sleep", "after restart"]
    values = [result["chat_recall_before"], result["chat_recall"], result["chat_recall_after_restart"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, values)
    ax.set(ylabel="chat recall", ylim=(0, 1.05),
           title=f"{result['questions']} questions, {result['set']} conversational set, {result['model']}")
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = parser("conversation", __doc__)
    p.add_argument("--facts", type=int, default=None, help="fact groups of the set to play (default: all)")
    p.add_argument("--set", choices=SETS, default="seed",
                   help="seed: the reference's 5 groups, 15 questions; written here: more (7 groups, 23 questions), "
                        "life (7 groups, 17 questions)")
    args = p.parse_args(argv)
    store = setup(args)
    load = partial(load_model, args.model, device=args.device)     # again for the restart
    model, tokenizer = load()
    result = conversation(model, tokenizer, store, lambda: load()[0], args.facts, edit=edit_settings(args),
                          set_name=args.set, seed=args.seed)
    emit({**result, "model": model_name(model), "seed": args.seed, "peak_rss_mb": peak_rss_mb()}, args, plot)
    return 0
