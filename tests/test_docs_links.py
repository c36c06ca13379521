"""The documentation a newcomer reads: README.md, docs/*.md and logs/README.md.

Every relative link (and image) must resolve to a file or folder inside the repository, and a
`#fragment` to a heading of the page it names (GitHub's heading anchors). README.md and docs/ carry
no issue numbers and no commit ids: history lives in logs/README.md and the committed log folders.
The checkers are tested on planted mistakes first, so that the checks on the real pages cannot
pass by finding nothing to check.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_PAGES = ("tutorial", "toolkit", "tasks", "alignment", "porting", "gpu", "reliability", "layout", "faq")
README_MAX_LINES = 200

FENCE = re.compile(r"^(\s*)(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
ISSUE_NUMBER = re.compile(r"\b(?:issues?|PRs?|pull requests?)\s*(?:no\.?\s*)?#?\s*\d+|(?<![\w&/#])#\d+\b",
                          re.I)
COMMIT_ID = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")


def _prose_lines(text, blank_code=True):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(2)
            elif m.group(2) == fence:
                fence = None
            continue
        if fence is None:
            yield number, INLINE_CODE.sub(lambda c: " " * len(c.group(0)), line) if blank_code \
                else line


def links(text):
    """(line number, target) of every inline link, image, reference definition and HTML link."""
    found = []
    for number, line in _prose_lines(text):
        for pattern in (INLINE_LINK, HTML_LINK):
            found += [(number, m.group(1)) for m in pattern.finditer(line)]
        m = REFERENCE_DEF.match(line)
        if m:
            found.append((number, m.group(1)))
    return found


def github_slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text):
    """The anchors of a page's headings, duplicates numbered as GitHub does (-1, -2, ...)."""
    seen, out = {}, set()
    for _, line in _prose_lines(text, blank_code=False):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def broken_links(path, root=ROOT):
    """'file:line: target: why' for each relative link of `path` that does not resolve."""
    text = _read(path)
    problems = []
    for number, target in links(text):
        if SCHEME.match(target):  # http:, https:, mailto: ... are not checked offline
            continue
        where = f"{os.path.relpath(path, root)}:{number}: {target}"
        file_part, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part \
            else path
        if os.path.relpath(resolved, root).startswith(os.pardir):
            problems.append(f"{where}: points outside the repository")
            continue
        if not os.path.exists(resolved):
            problems.append(f"{where}: no such file or folder")
            continue
        if fragment:
            if not resolved.endswith(".md") or os.path.isdir(resolved):
                problems.append(f"{where}: an anchor into something that is not a Markdown page")
            elif fragment not in anchors(_read(resolved)):
                problems.append(f"{where}: no heading with anchor #{fragment}")
    return problems


def history_references(path, root=ROOT):
    """'file:line: match' for each issue number or commit id in `path` (code included)."""
    problems = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        for pattern in (ISSUE_NUMBER, COMMIT_ID):
            problems += [f"{os.path.relpath(path, root)}:{number}: {m.group(0)!r}"
                         for m in pattern.finditer(line)]
    return problems


def _pages():
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(docs, name) for name in os.listdir(docs) if name.endswith(".md"))


# ----------------------------------------------------------------- the checkers on planted mistakes
def test_checkers_find_planted_mistakes(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "run.md").write_text("# A run\n\n## Loss: `train` vs valid\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n## Second part\n\n"
        "ok [run](../logs/run.md), [anchor](../logs/run.md#loss-train-vs-valid), [self](#second-part),\n"
        "ok [folder](../logs/), [web](https://example.org/x#y), ![img](../logs/run.md)\n"
        "bad [gone](../logs/missing.md) and ![gone too](img/none.png)\n"
        "bad [anchor](../logs/run.md#no-such-heading) and [self](#third-part)\n"
        "bad [outside](../../elsewhere.md)\n"
        "[ref]: ../logs/absent.md\n"
        "`[in code](nowhere.md)` is not a link\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "Fixed in issue 12, see #7 and issues 11-16; commit 0532f5e; a5525f8 too.\n"
        "Not history: 50304 rows, 1e-5, 628 passed, the-verdict, deadbeef, `h.0`.\n")
    broken = broken_links(str(page), root=str(tmp_path))
    assert [p.split(": ", 1)[1].split(":")[0] for p in broken] == [
        "../logs/missing.md", "img/none.png", "../logs/run.md#no-such-heading", "#third-part",
        "../../elsewhere.md", "../logs/absent.md"], broken
    found = [p.split(": ", 1)[1] for p in history_references(str(page), root=str(tmp_path))]
    assert found == ["'issue 12'", "'#7'", "'issues 11'", "'0532f5e'", "'a5525f8'"], found


def test_github_slugs():
    assert github_slug("Training: `gpt2_ft.py`") == "training-gpt2_ftpy"
    assert github_slug("`bash work.sh` on the GPU") == "bash-worksh-on-the-gpu"
    assert github_slug("Where the twins part: per-layer traces") == "where-the-twins-part-per-layer-traces"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


# ----------------------------------------------------------------------------- the real pages
def test_the_docs_pages_exist():
    pages = [os.path.basename(p)[:-3] for p in _pages()[1:]]
    assert set(DOC_PAGES) <= set(pages), sorted(set(DOC_PAGES) - set(pages))


def test_every_relative_link_resolves():
    pages = _pages() + [os.path.join(ROOT, "logs", "README.md")]
    checked = {p: [t for _, t in links(_read(p)) if not SCHEME.match(t)] for p in pages}
    # every page links somewhere, and the README links to each docs page: nothing vacuous
    assert all(checked.values()), [os.path.relpath(p, ROOT) for p, t in checked.items() if not t]
    readme_targets = {t.split("#")[0] for t in checked[pages[0]]}
    assert {f"docs/{name}.md" for name in DOC_PAGES} <= readme_targets
    problems = [problem for page in pages for problem in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_no_issue_numbers_or_commit_ids():
    problems = [problem for page in _pages() for problem in history_references(page)]
    assert not problems, ("README.md and docs/ name no issues or commits (history goes to "
                          "logs/README.md):\n" + "\n".join(problems))


def test_readme_fits_on_a_screen_and_is_the_long_description():
    readme = _read(os.path.join(ROOT, "README.md"))
    assert 20 < len(readme.splitlines()) <= README_MAX_LINES
    out = subprocess.run([sys.executable, "setup.py", "--long-description"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == readme.strip()
