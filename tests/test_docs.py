"""The repository stands on its own: every relative link and every cited document resolves inside it.

Scanned: every tracked Markdown file; every string and comment of the Python code under src/ and
benchmarks/ (docstrings, messages, pydantic descriptions); the configuration files (params.yaml,
presets, pyproject, dvc.yaml, the Snakemake files, the published-results reference). A citation is a
Markdown link `[text](path#anchor)` or any `*.md` path in the text, optionally followed by
`, section "<heading>"`; the file must exist inside the repository, and an anchor or a named
section must be a heading of that file. tests/ is not scanned: it names generated files (main.md)
and the shared data's own notes outside the repository on purpose.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from functools import cache
from pathlib import Path

import pytest

from .conftest import REPO

CONFIG_FILES = (
    "params.yaml",
    "presets/presets.yaml",
    "pyproject.toml",
    "dvc.yaml",
    "Snakefile",
    "Makefile",
    "references/published.yaml",
    ".ci/run",
)
CODE_DIRS = ("src/", "benchmarks/", "workflow/")
# Citations that another branch fixes (the files or lines are edited there): each entry must still be
# broken here, so the test tells when it can go.
PENDING: dict[tuple[str, str], str] = {}  # (file, cited target) → why it may fail for now

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
CITED = re.compile(
    r"(?<![\w./{-])((?:\.\.?/|[\w-]+/)*[\w.-]*[\w-]\.md)(?:#([\w-]+))?"
    r"""(?:,? section (?:"([^"]+)"|'([^']+)'))?"""
)


@cache
def tracked() -> tuple[str, ...]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return tuple(sorted(name for name in out.split("\0") if name and (REPO / name).is_file()))


def python_text(source: str) -> str:
    """Every string constant and comment of a Python (or Snakemake) file, one per line."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    parts = [tok.string for tok in tokens if tok.type == tokenize.COMMENT]
    try:
        tree = ast.parse(source)
    except SyntaxError:  # Snakemake's rule syntax: take the string tokens as they are
        return "\n".join(parts + [tok.string for tok in tokens if tok.type == tokenize.STRING])
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return "\n".join(parts + strings)


@cache
def scanned() -> dict[str, str]:
    """File → the text whose citations must resolve."""
    texts = {}
    for name in tracked():
        if name.endswith(".md") or name in CONFIG_FILES:
            texts[name] = (REPO / name).read_text()
        elif name.startswith(CODE_DIRS) and name.endswith((".py", ".smk")):
            texts[name] = python_text((REPO / name).read_text())
    return texts


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def headings(path: Path) -> tuple[set[str], set[str]]:
    """(anchors, heading texts) of a Markdown file, code blocks skipped."""
    anchors, texts, seen, fenced = set(), set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            base = slug(m.group(1))
            anchors.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
            texts.add(m.group(1).strip())
    return anchors, texts


def resolve(citing: str, target: str, bare_in_docs: bool) -> Path | None:
    """The file a citation names, looked up beside the citing file, at the root (and in docs/)."""
    bases = [(REPO / citing).parent, REPO] + ([REPO / "docs"] if bare_in_docs and "/" not in target else [])
    for base in bases:
        path = (base / target).resolve()
        if path.is_relative_to(REPO) and path.exists():
            return path
    return None


def problems_in(name: str, text: str) -> list[tuple[str, str]]:
    """(cited target, what is wrong) for every citation of `text` that does not resolve."""
    found = []
    targets = []
    if name.endswith(".md"):
        targets += [(t, None, False) for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    text = URL.sub("", text)
    for m in CITED.finditer(text):
        path, anchor, double_quoted, single_quoted = m.groups()
        section = double_quoted or single_quoted
        targets.append((path + (f"#{anchor}" if anchor else ""), section, True))
    for target, section, bare_in_docs in targets:
        path_part, _, anchor = target.partition("#")
        path = (REPO / name).resolve() if not path_part else resolve(name, path_part, bare_in_docs)
        if path is None:
            found.append((path_part, "no such file in the repository"))
            continue
        if path.suffix != ".md" or not (anchor or section):
            continue
        anchors, texts = headings(path)
        if anchor and anchor not in anchors:
            found.append((target, f"{path.relative_to(REPO)} has no heading with the anchor #{anchor}"))
        if section and section not in texts:
            found.append((target, f'{path.relative_to(REPO)} has no section "{section}"'))
    return list(dict.fromkeys(found))  # a link's target is also a cited path: report it once


def test_the_scan_covers_docs_code_and_configs():
    files = scanned()
    assert {"README.md", "docs/model.md", "params.yaml", "pyproject.toml", "src/mascot/config.py"} <= set(files)
    assert 'section "One training step of MASCOT"' in files["src/mascot/objective.py"]  # a docstring
    assert "# The only configuration of the pipeline" in files["params.yaml"]


@pytest.mark.parametrize("name", sorted(scanned()))
def test_every_citation_resolves_inside_the_repository(name):
    problems = problems_in(name, scanned()[name])
    pending = {target for (file, target) in PENDING if file == name}
    unexpected = [f"{target}: {why}" for target, why in problems if target not in pending]
    assert not unexpected, f"{name} cites what the repository does not have:\n  " + "\n  ".join(unexpected)
    fixed = pending - {target for target, _ in problems}
    assert not fixed, f"{name}: {sorted(fixed)} resolve now; remove them from PENDING in tests/test_docs.py"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see method.md §2.1", [("method.md", "no such file in the repository")]),
        ('docs/model.md, section "No such part"', [("docs/model.md", 'docs/model.md has no section "No such part"')]),
        (
            "[the model](docs/model.md#nowhere)",
            [("docs/model.md#nowhere", "docs/model.md has no heading with the anchor #nowhere")],
        ),
        ("[up](../outside.md)", [("../outside.md", "no such file in the repository")]),
        ('[ok](docs/model.md#variants-and-tables), docs/model.md, section "Variants and tables", model.md', []),
        ("https://example.org/notes.md is a URL, not a citation", []),
    ],
)
def test_a_broken_citation_is_reported(text, expected):
    assert problems_in("README.md", text) == expected


def test_the_readme_layout_matches_the_tree():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed, parent = set(), ""
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 4):
            continue  # blank or a continued description
        indent = len(line) - len(line.lstrip())
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        for entry in (n.strip() for n in names.split(",")):
            path = f"{parent}{entry}" if indent else entry
            assert (REPO / path).exists(), f"README's layout lists {path}, which the repository does not have"
            listed.add(path.split("/", 1)[0])
            if not indent and entry.endswith("/"):
                parent = entry
    top_dirs = {n.split("/", 1)[0] for n in tracked() if "/" in n and not n.startswith(".")}
    assert top_dirs <= listed, f"README's layout leaves out {sorted(top_dirs - listed)}"
