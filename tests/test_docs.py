"""The documents' links: every relative link reaches a file, and a link to a line of code lands on what it names."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def relative_links(document: Path) -> list[tuple[str, str]]:
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)  # code blocks hold no links
    return [(label, target) for label, target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_reach_a_file(document):
    missing = []
    for _, target in relative_links(document):
        path = target.split("#", 1)[0]
        if path and not (document.parent / path).exists():
            missing.append(target)
    assert missing == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_to_a_line_of_code_land_on_the_function_or_class_they_name(document):
    """`[`EmoSLLMProcessor.build_prompt`](../processing_emosllm.py#L375)`: line 375 defines `build_prompt`."""
    wrong = []
    for label, target in relative_links(document):
        match = re.fullmatch(r"([^#]+\.py)#L(\d+)", target)
        name = re.fullmatch(r"`([\w.]+)`", label)
        if not match or not name:
            continue
        lines = (document.parent / match.group(1)).read_text().splitlines()
        number = int(match.group(2))
        short = name.group(1).rsplit(".", 1)[-1]
        line = lines[number - 1] if number <= len(lines) else ""
        owner = name.group(1).rsplit(".", 1)[0] if "." in name.group(1) else None
        classes = [re.match(r"class\s+(\w+)", text) for text in lines[:number]]
        enclosing = next((c.group(1) for c in reversed(classes) if c), None)
        if not re.match(rf"\s*(async\s+)?(def|class)\s+{re.escape(short)}\b", line) or (
            owner and owner[0].isupper() and enclosing != owner
        ):
            found = [i + 1 for i, text in enumerate(lines) if re.match(rf"\s*(def|class)\s+{re.escape(short)}\b", text)]
            wrong.append(f"{target} for {name.group(1)} (defined at line {found})")
    assert wrong == []


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_to_a_section_reach_a_heading(document):
    wrong = []
    for _, target in relative_links(document):
        path, _, anchor = target.partition("#")
        if not anchor or (path and not path.endswith(".md")):
            continue
        linked = (document.parent / path) if path else document
        text = re.sub(r"```.*?```", "", linked.read_text(), flags=re.S)
        anchors = {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
        if anchor not in anchors:
            wrong.append(target)
    assert wrong == []


def test_files_and_classes_stay_within_the_sizes_a_reader_takes_in():
    """Issue #40's limits: no Python file over 600 lines, no class over 400, README.md at most 150 lines (the model
    card), BENCHMARKS.md at most 300. A change that grows past one splits the piece or moves detail to docs/."""
    import ast
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    files = [REPO / name for name in tracked] or [  # (a copy without git: the project's folders)
        path for folder in (".", "training", "tests", "bench") for path in sorted((REPO / folder).glob("*.py"))]
    too_long = []
    for path in files:
        text = path.read_text()
        if len(text.splitlines()) > 600:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        too_long += [f"{path.relative_to(REPO)}: class {node.name}, {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(text))
                     if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 400]
    for name, limit in (("README.md", 150), ("BENCHMARKS.md", 300)):
        if len((REPO / name).read_text().splitlines()) > limit:
            too_long.append(f"{name}: over {limit} lines")
    assert len(files) > 20 and too_long == []
