"""The extension inside a real text-generation-webui, headless (--nowebui --api) on the CPU.

Set TEXTGEN_DIR to a checkout of oobabooga/text-generation-webui. The host runs in its own Python:
$TEXTGEN_PYTHON if set, else TEXTGEN_DIR/installer_files/env (where its installer puts one, and
where `install.py --webui` looks), created here with the host's pins when missing. The test runs
`install.py --webui`, then uses a user_data folder of its own (--user-data-dir) so the user's
settings and memories are never touched.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleep_core import Memory, MemoryConfig
from sleep_core.assets import ensure_default_model

TEXTGEN_DIR = os.environ.get("TEXTGEN_DIR")
pytestmark = [
    pytest.mark.e2e, pytest.mark.slow, pytest.mark.model,
    pytest.mark.skipif(not TEXTGEN_DIR, reason="set TEXTGEN_DIR to a text-generation-webui checkout to run this test"),
]

REPO = Path(__file__).resolve().parents[2]
NAME = "sleeping_llm"
MODEL = "SmolLM2-135M-Instruct"
# What the host needs to run API-only on a CPU (HOST_CONTRACT.md); torch comes from local disk.
HOST_PACKAGES = [
    "torch==2.13.0", "transformers==5.6.*", "accelerate==1.13.*", "numpy==2.2.*", "pydantic==2.11.0",
    "fastapi==0.112.4", "sse-starlette==1.6.5", "jinja2==3.1.6", "huggingface-hub==1.5.*", "safetensors==0.7.*",
    "pyyaml", "markdown", "Pillow", "requests", "rich", "tqdm", "tiktoken", "uvicorn", "ddgs==9.14.1",
]
FACT, QUESTION, ANSWER = "I live in Portland, Oregon.", "Where do I live?", "Portland"
START_TIMEOUT_S = 900
SLEPT = re.compile(r"(?i)\bsleep #\d+")  # the core's log line for a finished sleep, in the host's console
OWN_ITEMS = {"extensions", "models", "settings.yaml", "cache", "logs", NAME}  # never shared with the user's
LEARN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def host_python() -> str:
    if os.environ.get("TEXTGEN_PYTHON"):
        return os.environ["TEXTGEN_PYTHON"]
    env = Path(TEXTGEN_DIR) / "installer_files" / "env"
    python = env / "bin" / "python"
    if not python.exists():
        venv.create(env, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", *HOST_PACKAGES], check=True)
    return str(python)


@pytest.fixture(scope="module")
def installed(host_python) -> str:
    """`install.py --webui`: the core into the host's Python, the extension linked into its user_data."""
    subprocess.run([sys.executable, REPO / "install.py", "--webui", TEXTGEN_DIR, "--python", host_python],
                   check=True, cwd=REPO)
    return host_python


@pytest.fixture
def user_data(tmp_path) -> Path:
    """A user_data folder with the extension, the default model and settings that let the API teach;
    the host's characters, templates and presets are linked in (the API needs the default character)."""
    folder = tmp_path / "user_data"
    folder.mkdir()
    for item in (Path(TEXTGEN_DIR) / "user_data").iterdir():
        if item.name not in OWN_ITEMS:
            (folder / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    (folder / "extensions").mkdir()
    (folder / "models").mkdir()
    (folder / "extensions" / NAME).symlink_to(REPO / "extension", target_is_directory=True)
    (folder / "models" / MODEL).symlink_to(ensure_default_model(), target_is_directory=True)
    settings = {"max_new_tokens": 40, f"{NAME}-learn_from_api": True, f"{NAME}-auto_sleep": True,
                f"{NAME}-drowsiness_threshold": 0.01}  # drowsy after one fact: it sleeps on its own
    (folder / "settings.yaml").write_text(yaml.safe_dump(settings))
    return folder


def start_host(serve, python: str, user_data: Path, port: int):
    server = serve([python, "server.py", "--user-data-dir", user_data, "--nowebui", "--api", "--api-port", port,
                    "--extensions", NAME, "--model", MODEL, "--cpu"], Path(TEXTGEN_DIR))
    server.wait_for(f"http://127.0.0.1:{port}/v1/models", START_TIMEOUT_S)
    return server


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def chat(port: int, text: str) -> str:
    """A new conversation of one user message, answered greedily."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 40, "temperature": 0}
    return post(port, "/v1/chat/completions", body)["choices"][0]["message"]["content"]


def wait_for_sleep(server, timeout: float = LEARN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not SLEPT.search(server.output(last=10**6)):
        assert time.monotonic() < deadline, f"no sleep within {timeout:.0f} s:\n{server.output()}"
        time.sleep(5)


def sleep_reports(user_data: Path) -> list[dict]:
    """The host's memory store read back with the core (after the host stopped)."""
    folder = ensure_default_model()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    memory = Memory.open(model, AutoTokenizer.from_pretrained(folder), MemoryConfig(store_dir=user_data / NAME))
    try:
        return memory.sleep_reports()
    finally:
        memory.close()


def answer_eventually(port: int, server, timeout: float = LEARN_TIMEOUT_S) -> str:
    """Ask QUESTION until the answer names ANSWER (the fact is injected off the request's path)."""
    deadline = time.monotonic() + timeout
    while ANSWER not in (reply := chat(port, QUESTION)):
        assert time.monotonic() < deadline, f"never answered {ANSWER!r}; last: {reply!r}\n{server.output()}"
        time.sleep(5)
    return reply


def test_a_fact_told_through_the_api_survives_sleep_a_model_reload_and_a_restart(installed, user_data, serve, port):
    server = start_host(serve, installed, user_data, port)
    assert ANSWER not in chat(port, QUESTION), "the model knew the answer before being told"
    chat(port, FACT)
    print("after the fact:", answer_eventually(port, server))
    wait_for_sleep(server)
    assert ANSWER in chat(port, QUESTION), server.output()

    post(port, "/v1/internal/model/load", {"model_name": MODEL})  # a new model object from disk, no event
    assert ANSWER in chat(port, QUESTION), server.output()

    server.stop()
    server = start_host(serve, installed, user_data, port)
    reply = chat(port, QUESTION)
    print("after a restart:", reply)
    assert ANSWER in reply, server.output()
    server.stop()
    assert any(report["kind"] == "sleep" for report in sleep_reports(user_data))
