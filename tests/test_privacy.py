"""Privacy: forget leaves no byte of a fact's text in any file of the store (database, WAL, sleep reports,
edit files) and reverts its edit exactly; forget-everything returns the weights bitwise to pristine. And no
network: the memory runs with sockets refused, and no module of sleep_core imports a network library."""
import ast
import socket
import subprocess
from pathlib import Path

import torch

import sleep_core
from sleep_core import EditConfig, Fact, Memory, MemoryConfig
from sleep_core.bench.crash import committed, expected
from sleep_core.model import ModelAdapter

SECRET = Fact("Zorblax Quindle", "'s bank PIN is", "Vexmorrow", ("What is Zorblax Quindle's bank PIN?",))
OTHER = Fact("Aria", "lives in", "Halvorsund", ("Where does Aria live?",))
NETWORK = {"socket", "ssl", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp", "ftplib", "smtplib",
           "xmlrpc", "websocket", "websockets", "huggingface_hub", "subprocess"}
# The one exception: preparing assets at install time runs `pip download gensim` (the Wikipedia corpus).
ALLOWED = {"assets/corpus.py": {"subprocess"}}


def _config(store_dir):
    return MemoryConfig(store_dir=store_dir, edit=EditConfig(cov_tokens=3000, v_steps=4))


def _files_containing(folder: Path, *markers: str) -> list[str]:
    """Every file of the store whose raw bytes contain a marker, in any letter case (the index lowercases)."""
    needles = [m.lower().encode() for m in markers]
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and any(n in p.read_bytes().lower() for n in needles))


def _pristine(make_tiny, layers) -> dict:
    adapter = ModelAdapter(make_tiny())
    return adapter, {l: adapter.read_weight(l) for l in layers}


def test_forget_leaves_no_trace_of_the_text_and_reverts_exactly(make_tiny, tokenizer, store_dir):
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    secret, _ = memory.inject_now([SECRET, OTHER])
    memory.add(SECRET, "my friend Zorblax Quindle told me his bank PIN is Vexmorrow")   # a duplicate row
    memory.wait_idle(60)
    memory.sleep()                                          # its report quotes every audited fact
    folder = memory.store.folder
    assert _files_containing(folder, "Vexmorrow", "Zorblax")    # the search does see the text before
    memory.forget(secret)
    assert _files_containing(folder, "Vexmorrow", "Zorblax", "Quindle") == []
    assert _files_containing(folder, "Halvorsund")               # the other fact is still there
    assert (folder / "memory.sqlite-wal").stat().st_size == 0
    edits, _, _ = committed(folder)
    adapter, pristine = _pristine(make_tiny, memory.adapter.layers)
    want = expected(adapter, pristine, edits)
    assert set(edits) == set(memory.ledger.columns) and secret not in edits
    assert all(torch.equal(want[l], memory.adapter.read_weight(l)) for l in want)
    memory.close()


def test_forget_everything_returns_to_pristine_without_a_trace(make_tiny, tokenizer, store_dir):
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    memory.inject_now([SECRET, OTHER])
    memory.sleep()
    memory.forget_everything()
    folder = memory.store.folder
    _, pristine = _pristine(make_tiny, memory.adapter.layers)
    assert all(torch.equal(pristine[l], memory.adapter.read_weight(l)) for l in pristine)
    assert _files_containing(folder, "Vexmorrow", "Zorblax", "Halvorsund") == []
    assert list((folder / "edits").iterdir()) == [] and memory.facts() == [] and memory.sleep_reports() == []
    memory.close()


def test_the_memory_never_touches_the_network(make_tiny, tokenizer, store_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network or process access attempted: {args[:2]}")
    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    memory = Memory.open(make_tiny(), tokenizer, _config(store_dir))
    memory.learn("My sister Alice lives in Lisbon.")
    memory.inject_now([OTHER])
    assert memory.wait_idle(60)
    memory.sleep()
    memory.import_json(memory.export_json())
    memory.forget(memory.facts()[0].id)
    memory.close()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained" and node.args \
                and isinstance(node.args[0], ast.Constant):
            names.add(f"from_pretrained({node.args[0].value!r}): a hub name")
    return names


def test_no_module_imports_a_network_library():
    root = Path(sleep_core.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        bad = {n for n in _imports(path) if n in NETWORK or "hub name" in n} - ALLOWED.get(name, set())
        if bad:
            found[name] = sorted(bad)
    assert found == {}
    assert all((root / name).exists() and _imports(root / name) >= allowed for name, allowed in ALLOWED.items())
