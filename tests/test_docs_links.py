"""The project's docs stand on their own: every link and file reference resolves inside the repo.

A user of wxpush has this repository and nothing beside it, so README.md and docs/*.md may only
point at files that exist here (relative Markdown links, their #anchors, and repository paths
such as `sending/sender.py`), and no tracked file may cite a note that lives outside it.
Fast: reads files (the list from `git ls-files`), starts no server.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
pytestmark = pytest.mark.process  # `git ls-files` lists the repository (a subprocess)

#: Notes that exist only beside a developer's checkout, never in it (issue 10, point 7).
#: Each name has one letter in brackets, so that grepping the repository for the notes'
#: names finds nothing, this file included.
OUTSIDE_NOTES = re.compile(
    r"\.\./share[d]|/work/share[d]|share[d]/[A-Z_]+\.md|DESIG[N]\.md|DESIG[N] decision"
    r"|WECHAT_AP[I]\.md|PREFECT_NOTE[S]|PERFORMANCE_NOTE[S]|STYL[E]\.md|PEER[S]\.md"
)
#: `[text](target)` and `[text]: target`; images too.
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MD_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
#: Files the docs and code may cite by path. Runtime artefacts (`.wxpush/…`) are not files
#: of the repository and are not in this list.
SOURCE_TOPS = (
    "docs", "config", "tasks", "flows", "wechat", "db", "receiver", "cli", "bench", "tests", ".ci"
)
PATH_REF = re.compile(
    r"(?<![\w./:@~-])((?:" + "|".join(map(re.escape, SOURCE_TOPS)) + r")/[\w./-]*[\w/])"
)
#: A file named without its folder, in backticks: `prefect.yaml`, `pusher.py`.
#: A path relative to the doc, in backticks: `../outside/x.md`, `./sending.md`.
DOTTED_PATH = re.compile(r"`(\.{1,2}/[^`\s]+)`")
BARE_FILE = re.compile(r"`([\w.-]+\.(?:md|py|yaml|yml|toml|json|ini|txt|sh))`")
DOC_REF = re.compile(r"(?<![\w./:@~-])(docs/[\w.-]+\.md)(#[\w-]+)?")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".wxpush", "build"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def repo_files() -> tuple[str, ...]:
    """Tracked files plus new, not-ignored ones (git), or a plain walk without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout.decode()
        return tuple(sorted(p for p in out.split("\0") if p and (ROOT / p).exists()))
    except (OSError, subprocess.SubprocessError):
        return tuple(
            sorted(
                _rel(p)
                for p in ROOT.rglob("*")
                if p.is_file()
                and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
                and not any(part.endswith(".egg-info") for part in p.parts)
            )
        )


def _exists(rel: str) -> bool:
    rel = rel.rstrip("/")
    files = repo_files()
    return rel in files or any(f.startswith(rel + "/") for f in files)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    kept = "".join(
        ch
        for ch in text
        if ch in " -_" or unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "Mn"
    )
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 … for repeats."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", path.read_text()), re.M):
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(found)


def _link_problem(doc: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: …
        return None
    path_part, _, fragment = target.partition("#")
    resolved = (doc.parent / path_part).resolve() if path_part else doc
    try:
        rel = _rel(resolved)
    except ValueError:
        return f"{target!r} leaves the repository"
    if not _exists(rel):
        return f"{target!r}: {rel} is not in the repository"
    if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
        return f"{target!r}: {rel} has no heading #{fragment}"
    return None


def link_problems(doc: Path, text: str) -> list[str]:
    """Relative Markdown links of one doc that do not resolve inside the repository."""
    targets = MD_LINK.findall(FENCE.sub("", text)) + MD_REF_DEF.findall(FENCE.sub("", text))
    return [p for t in targets if (p := _link_problem(doc, t))]


def path_problems(doc: Path, text: str) -> list[str]:
    """Repository paths a doc names (`sending/sender.py`, docs/tokens.md) that do not exist."""
    problems = []
    for match in PATH_REF.finditer(text):
        ref = match.group(1).rstrip(".")
        if any(ch in ref for ch in "*<>{}"):
            continue
        if not _exists(ref):
            problems.append(f"{ref} is not in the repository")
    for ref in DOTTED_PATH.findall(text):
        problems += [p for p in [_link_problem(doc, ref)] if p]
    names = {f.rsplit("/", 1)[-1] for f in repo_files()}
    problems += [f"{n} is not in the repository" for n in BARE_FILE.findall(text) if n not in names]
    return problems


def code_doc_problems(rel: str, text: str) -> list[str]:
    """docs/…md paths (and #anchors) cited in a source file that do not exist."""
    problems = []
    for ref, fragment in DOC_REF.findall(text):
        if not _exists(ref):
            problems.append(f"{rel}: {ref} is not in the repository")
        elif fragment and fragment[1:] not in anchors(ROOT / ref):
            problems.append(f"{rel}: {ref} has no heading {fragment}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_markdown_links_resolve_inside_the_repo(doc: Path) -> None:
    assert link_problems(doc, doc.read_text()) == []


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_repository_paths_named_in_docs_exist(doc: Path) -> None:
    assert path_problems(doc, doc.read_text()) == []


def test_docs_cited_from_code_exist() -> None:
    """Code comments, prefect.yaml and the Makefile cite docs/…md (and its #anchor) that exist."""
    problems = []
    for rel in repo_files():
        if rel == _rel(Path(__file__)):
            continue
        if rel.endswith((".py", ".yaml", ".yml", ".toml")) or rel == "Makefile":
            problems += code_doc_problems(rel, (ROOT / rel).read_text(errors="replace"))
    assert problems == []


def test_no_file_cites_notes_outside_the_repo() -> None:
    this = _rel(Path(__file__))
    hits = []
    for rel in repo_files():
        if rel == this:
            continue
        try:
            text = (ROOT / rel).read_text()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_NOTES.search(line):
                hits.append(f"{rel}:{number}: {line.strip()[:100]}")
    assert hits == []


# -- the checker checks: each rule catches what it is for ------------------------------------


def test_the_checks_catch_broken_references() -> None:
    doc = ROOT / "docs" / "probe.md"  # never written: the rules only resolve against its folder
    text = (
        "[gone](nowhere.md) [ok](sending.md) [web](https://example.com/x.md)\n"
        "[bad anchor](tokens.md#no-such-heading) see `tasks/nothing_here.py` and docs/gone.md\n"
        "`prefect.yaml` is here, `NOTES.md` is not, nor `../../outside/x.md`\n"
        "```\n[in a fence](ignored.md)\n```\n"
    )
    links = link_problems(doc, text)
    paths = path_problems(doc, text)
    assert any("nowhere.md" in p for p in links)
    assert any("no-such-heading" in p for p in links)
    assert not any("sending.md" in p or "example.com" in p or "ignored" in p for p in links)
    assert paths == [
        "tasks/nothing_here.py is not in the repository",
        "docs/gone.md is not in the repository",
        "'../../outside/x.md' leaves the repository",
        "NOTES.md is not in the repository",
    ]
    assert code_doc_problems("x.py", "# see docs/sending.md#no-such-part and docs/gone.md") == [
        "x.py: docs/sending.md has no heading #no-such-part",
        "x.py: docs/gone.md is not in the repository",
    ]
    assert code_doc_problems("x.py", "# docs/sending.md#how-the-send-path-decides") == []
    assert OUTSIDE_NOTES.search("see ../" + "shared/WECHAT_" + "API.md §2")
    assert OUTSIDE_NOTES.search("DESIGN" + ".md, decision 4")
    assert not OUTSIDE_NOTES.search("docs/design-notes.md")
    assert github_slug("Who the audience SQL runs as") == "who-the-audience-sql-runs-as"
    slug = github_slug("`send_batch`: one task per batch (v2)")
    assert slug == "send_batch-one-task-per-batch-v2"
