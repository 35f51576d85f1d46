"""General text for covariance statistics and perplexity: an English Wikipedia extract.

The gensim wheel ships a shortened English Wikipedia XML export as test data (CC BY-SA 3.0,
Wikipedia contributors). We fetch the wheel from the package index, keep its 106 articles as plain
paragraphs and split them by a hash of the title into 91 articles for covariance statistics (2.43 M
characters, 532,173 tokens of the default model) and 15 held out for perplexity (0.33 M characters,
77,278 tokens).
"""

import bz2
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..paths import corpus_dir, write_text_atomic

logger = logging.getLogger(__name__)

GENSIM_WHEEL = "gensim==4.4.0"
XML_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
XML_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
HELDOUT_PERCENT = 10
MIN_PARAGRAPH_WORDS = 8
MANIFEST = "manifest.json"

DROPPED_TAGS = {"table", "ref", "references", "gallery", "math", "timeline", "imagemap"}
DROPPED_LINK = re.compile(r"^\s*:?\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
LEFTOVER_MARKUP = re.compile(
    r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<[^>]+>|\{\{[^{}]*\}\}|\[\[(?:File|Image):.*?\]\]"
)
EMPTIED_PARENS = re.compile(r"\s*\([;,\s]*\)|(?<=\()[;,\s]+")  # what removed templates leave behind


@dataclass(frozen=True)
class Corpus:
    """Plain-text files: one paragraph per line, articles separated by an empty line."""

    covariance_text: Path
    heldout_text: Path

    def covariance_articles(self) -> list[str]:
        return read_articles(self.covariance_text)

    def heldout_articles(self) -> list[str]:
        return read_articles(self.heldout_text)

    def titles(self) -> dict[str, list[str]]:
        """Article titles per split: {"covariance": [...], "heldout": [...]}."""
        return json.loads((self.covariance_text.parent / MANIFEST).read_text(encoding="utf-8"))["titles"]


def read_articles(path: Path) -> list[str]:
    return [article for article in path.read_text(encoding="utf-8").split("\n\n") if article.strip()]


def ensure_corpus(progress: Callable[[str], None] | None = None) -> Corpus:
    """The cached corpus, built on first use (downloads the gensim wheel from the package index)."""
    folder = corpus_dir()
    corpus = Corpus(folder / "covariance.txt", folder / "heldout.txt")
    if not (folder / MANIFEST).is_file():
        say = progress or logger.info
        say(f"Downloading the {GENSIM_WHEEL} wheel for its Wikipedia extract")
        xml = download_wikipedia_xml()
        say("Stripping wiki markup")
        _write_corpus(folder, corpus, list(parse_articles(xml)))
        say(f"Corpus ready at {folder}")
    return corpus


def download_wikipedia_xml() -> bytes:
    """The Wikipedia XML export inside the gensim wheel, checked against its known hash."""
    with tempfile.TemporaryDirectory() as tmp:
        _pip_download(GENSIM_WHEEL, Path(tmp))
        wheel = next(Path(tmp).glob("gensim-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(XML_MEMBER)
    digest = hashlib.sha256(packed).hexdigest()
    if digest != XML_SHA256:
        raise RuntimeError(f"{XML_MEMBER} has sha256 {digest}, expected {XML_SHA256}")
    return bz2.decompress(packed)


def _pip_download(requirement: str, folder: Path) -> None:
    # One fixed platform, so every machine gets the same wheel whatever its own Python or OS.
    platform = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--only-binary=:all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *platform, "-d", str(folder)]
    command.append(requirement)
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stdout}\n{result.stderr}")


def parse_articles(xml: bytes) -> Iterator[tuple[str, str]]:
    """(title, plain text) of every main-namespace article that is not a redirect."""
    for _, element in ET.iterparse(io.BytesIO(xml)):
        if not element.tag.endswith("}page"):
            continue
        title = element.findtext("{*}title")
        wikitext = element.findtext("{*}revision/{*}text") or ""
        is_article = element.findtext("{*}ns") == "0" and element.find("{*}redirect") is None
        element.clear()
        text = strip_markup(wikitext) if is_article else ""
        if text:
            yield title, text


def strip_markup(wikitext: str) -> str:
    """Plain paragraphs of an article: no templates, references, tables, files, categories, headings."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for node in _dropped_nodes(code):
        try:
            code.remove(node)
        except ValueError:  # already gone with an enclosing node
            pass
    plain = code.strip_code(normalize=True, collapse=True)
    return "\n".join(p for p in map(_clean_line, plain.splitlines()) if len(p.split()) >= MIN_PARAGRAPH_WORDS)


def _dropped_nodes(code) -> Iterator:
    yield from code.filter_templates(recursive=False)
    yield from code.filter_headings()
    yield from (tag for tag in code.filter_tags() if str(tag.tag).strip().lower() in DROPPED_TAGS)
    yield from (link for link in code.filter_wikilinks() if DROPPED_LINK.match(str(link.title)))


def _clean_line(line: str) -> str:
    line = EMPTIED_PARENS.sub("", LEFTOVER_MARKUP.sub("", line))
    line = re.sub(r"\s+", " ", line).strip()
    return "" if line[:1] in {"|", "!", "{", "}"} else line


def is_heldout(title: str) -> bool:
    """Stable split by title: the same article is held out on every machine."""
    return int(hashlib.sha256(title.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def _write_corpus(folder: Path, corpus: Corpus, articles: list[tuple[str, str]]) -> None:
    """Write both splits, then the manifest last: its presence means the corpus is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    heldout = [(t, x) for t, x in articles if is_heldout(t)]
    covariance = [(t, x) for t, x in articles if not is_heldout(t)]
    for path, split in ((corpus.covariance_text, covariance), (corpus.heldout_text, heldout)):
        write_text_atomic(path, "\n\n".join(text for _, text in split) + "\n")
    manifest = {
        "source": f"{GENSIM_WHEEL}:{XML_MEMBER}",
        "source_sha256": XML_SHA256,
        "licence": "CC BY-SA 3.0, Wikipedia contributors",
        "titles": {"covariance": [t for t, _ in covariance], "heldout": [t for t, _ in heldout]},
    }
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
