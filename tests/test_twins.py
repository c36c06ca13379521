"""The twins stay translations of each other: torch_impl/X.py and jittor_impl/X.py, line for line.

As transformers keeps its framework copies honest (`# Copied from` + utils/check_copies.py): each
torch file is normalised (torch names mapped to their Jittor names by the table below, comments
and blank lines dropped) and compared with its Jittor twin. A line where the frameworks genuinely
differ carries a marker at its end, in each file on that file's own lines (a few words of why are
welcome; they may not contain `#`):

    import torch  # framework
    p.requires_grad = trains(name)  # framework: Jittor's eval() keeps its own record

Lines of a multi-line string (a docstring), where no comment can go, are marked by a comment line
directly above the line that opens the string, numbering the string's lines from 1 (the line with
the opening quotes; blank lines inside a range are skipped):

    def mark_trainable(model, trains):
        # framework: docstring lines 1-5

The check: the unmarked lines of the two files must match line for line; the marked lines between
two matching lines (a hunk) are compared with each other, and a marked line that matches a line of
its twin's hunk is a stale marker (a marked line equal to a line elsewhere in the twin still
differs: it stands between other neighbours). So every differing line is marked, every marked
line differs, and each failure names file:line and the line as written.
"""
import difflib
import io
import os
import re
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWIN_FILES = ("__init__.py", "model.py", "lora.py", "ops.py", "optim.py", "train.py", "beam.py",
              "sampler.py", "classifier.py", "preference.py", "peft_modules.py")

# torch name -> Jittor name, applied to the torch side before the comparison.
NAME_MAP = [
    (r"\bPyTorch\b", "Jittor"),
    (r"\b(torch|jittor)_impl\b", lambda m: "jittor_impl" if m.group(1) == "torch" else "torch_impl"),
    (r"\bdef forward\(", "def execute("),
    (r"`forward\(", "`execute("),
    (r"\btorch\b", "jt"),
    (r"\.float\(\)", ".float32()"),
    (r"\.view\(", ".reshape("),
]

# A comment that ends in `# framework` or `# framework: why` marks its line.
MARKER = re.compile(r"(?:^|\s)#\s*framework(?::[^#]*)?$")
# A comment line `# framework: docstring lines 2-3, 5` marks lines of the string opened below it
# (blank lines inside a range are never compared, so a range may span them).
STRING_MARKER = re.compile(r"^#\s*framework:\s*(?:doc)?string lines?\s+(\d+(?:-\d+)?(?:\s*,\s*\d+(?:-\d+)?)*)"
                           r"\s*(?::.*)?$")


class TwinLine:
    """A line that takes part in the comparison: its number in the file, its text (stripped,
    marker removed, torch names mapped), the line as written, and whether it is marked."""

    def __init__(self, number, text, written, marked):
        self.number, self.text, self.written, self.marked = number, text, written, marked


def source_layout(source):
    """{row: (column, text)} of the comments and [(first row, last row)] of the strings that span
    several lines, from Python's own tokenizer (so a `#` inside a string is no comment)."""
    comments, strings, opened = {}, [], []
    fstring_start = getattr(tokenize, "FSTRING_START", None)  # Python 3.12 splits f-strings
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = (token.start[1], token.string)
        elif token.type == tokenize.STRING and token.end[0] > token.start[0]:
            strings.append((token.start[0], token.end[0]))
        elif fstring_start is not None and token.type == fstring_start:
            opened.append(token.start[0])
        elif fstring_end is not None and token.type == fstring_end:
            first = opened.pop()
            if token.end[0] > first:
                strings.append((first, token.end[0]))
    return comments, strings


def line_ranges(spec):
    """`2-3, 5` -> [(2, 3), (5, 5)]."""
    ranges = []
    for part in spec.split(","):
        low, _, high = part.strip().partition("-")
        ranges.append((int(low), int(high or low)))
    return ranges


def read_twin(path, label, mapped):
    """The compared lines of one twin file and the problems of its markers (file:line: why)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    rows = source.splitlines()
    comments, strings = source_layout(source)
    string_at = {first: (first, last) for first, last in strings}
    marked, problems, texts = set(), [], {}
    for number, row in enumerate(rows, 1):
        text = row.strip()
        column, comment = comments.get(number, (None, ""))
        found = MARKER.search(comment)
        if column is not None and not row[:column].strip():  # a comment line
            spec = STRING_MARKER.match(comment)
            if spec:
                following = next((n for n in range(number + 1, len(rows) + 1)
                                  if rows[n - 1].strip() and not rows[n - 1].strip().startswith("#")), None)
                if following not in string_at:
                    problems.append(f"{label}:{number}: the marker names string lines, but no string of "
                                    f"several lines opens on the next line of code: {text}")
                    continue
                first, last = string_at[following]
                size = last - first + 1
                for low, high in line_ranges(spec.group(1)):
                    named = f"line {low}" if low == high else f"lines {low}-{high}"
                    compared = [first + k - 1 for k in range(low, high + 1) if k <= size
                                and rows[first + k - 2].strip() and not rows[first + k - 2].strip().startswith("#")]
                    if not 1 <= low <= high <= size:
                        problems.append(f"{label}:{number}: the marker names {named} of a string of "
                                        f"{size} lines: {text}")
                    elif not compared:
                        problems.append(f"{label}:{number}: the marker names {named} of the string, blank "
                                        f"or starting with # (never compared): {text}")
                    marked.update(compared)
            elif found:
                problems.append(f"{label}:{number}: a marker on a comment line marks nothing (put it "
                                f"at the end of the line it marks): {text}")
            continue
        if found:
            if STRING_MARKER.match(comment[found.start():].strip()):
                problems.append(f"{label}:{number}: the docstring form of the marker goes on its own "
                                f"line above the string: {text}")
            marked.add(number)
            text = (row[:column] + comment[:found.start()]).strip()
        if not text or text.startswith("#"):
            continue
        if mapped:
            for pattern, replacement in NAME_MAP:
                text = re.sub(pattern, replacement, text)
        texts[number] = text
    lines = [TwinLine(number, text, rows[number - 1].strip(), number in marked)
             for number, text in sorted(texts.items())]
    return lines, problems


def twin_differences(root, name):
    """The problems of the twin pair `name`: lines that differ without a marker, marked lines that
    match their twin, malformed markers; each as `side_impl/name:line: why: the line`."""
    labels = {side: f"{side}_impl/{name}" for side in ("torch", "jittor")}
    torch_lines, problems = read_twin(os.path.join(root, "torch_impl", name), labels["torch"], mapped=True)
    jittor_lines, jittor_problems = read_twin(os.path.join(root, "jittor_impl", name), labels["jittor"],
                                              mapped=False)
    problems += jittor_problems
    # Anchors: the unmarked lines that match, in order. Between two anchors lies a hunk.
    plain = {"torch": [k for k, line in enumerate(torch_lines) if not line.marked],
             "jittor": [k for k, line in enumerate(jittor_lines) if not line.marked]}
    matcher = difflib.SequenceMatcher(None, [torch_lines[k].text for k in plain["torch"]],
                                      [jittor_lines[k].text for k in plain["jittor"]], autojunk=False)
    anchors = [(plain["torch"][a + i], plain["jittor"][b + i])
               for a, b, size in matcher.get_matching_blocks() for i in range(size)]
    anchors.append((len(torch_lines), len(jittor_lines)))
    start = (0, 0)
    for end in anchors:
        hunk = {"torch": torch_lines[start[0]:end[0]], "jittor": jittor_lines[start[1]:end[1]]}
        counterpart = {"torch": {}, "jittor": {}}
        inner = difflib.SequenceMatcher(None, [line.text for line in hunk["torch"]],
                                        [line.text for line in hunk["jittor"]], autojunk=False)
        for a, b, size in inner.get_matching_blocks():
            for i in range(size):
                counterpart["torch"][a + i] = hunk["jittor"][b + i]
                counterpart["jittor"][b + i] = hunk["torch"][a + i]
        for side, other in (("torch", "jittor"), ("jittor", "torch")):
            for k, line in enumerate(hunk[side]):
                twin = counterpart[side].get(k)
                if line.marked and twin is not None:
                    problems.append(f"{labels[side]}:{line.number}: marked, but matches "
                                    f"{labels[other]}:{twin.number} (remove the marker): {line.written}")
                elif not line.marked and twin is None:
                    problems.append(f"{labels[side]}:{line.number}: differs from its twin and carries no "
                                    f"marker: {line.written}")
        start = (end[0] + 1, end[1] + 1)
    return problems


@pytest.mark.parametrize("name", TWIN_FILES)
def test_twins_differ_only_where_the_frameworks_do(name):
    assert twin_differences(ROOT, name) == []


TORCH_TWIN = '''# framework: docstring line 3
"""Scale a tensor.

Torch form.
"""
import torch  # framework


def scale(x, factor):
    # framework: docstring line 2
    """Multiply by factor.
    In place, as torch does.
    """
    x.mul_(factor)  # framework: in place
    return x.view(-1)
'''

JITTOR_TWIN = '''# framework: docstring line 3
"""Scale a tensor.

Jittor form.
"""
from .runtime import jt  # framework


def scale(x, factor):
    # framework: docstring line 2
    """Multiply by factor.
    A new Var: Jittor has no in-place ops.
    """
    x = x * factor  # framework: no in-place ops
    return x.reshape(-1)
'''


def write_twins(root, torch_text, jittor_text, name="scale.py"):
    for side, text in (("torch_impl", torch_text), ("jittor_impl", jittor_text)):
        (root / side).mkdir(exist_ok=True)
        (root / side / name).write_text(text)


def test_twins_with_marked_differences_pass(tmp_path):
    write_twins(tmp_path, TORCH_TWIN, JITTOR_TWIN)
    assert twin_differences(str(tmp_path), "scale.py") == []


def test_an_unmarked_line_changed_on_one_side_fails(tmp_path):
    write_twins(tmp_path, TORCH_TWIN, JITTOR_TWIN.replace("return x.reshape(-1)", "return x.reshape(1, -1)"))
    assert twin_differences(str(tmp_path), "scale.py") == [
        "torch_impl/scale.py:15: differs from its twin and carries no marker: return x.view(-1)",
        "jittor_impl/scale.py:15: differs from its twin and carries no marker: return x.reshape(1, -1)",
    ]


def test_an_unmarked_docstring_line_changed_on_one_side_fails(tmp_path):
    write_twins(tmp_path, TORCH_TWIN, JITTOR_TWIN.replace('"""Scale a tensor.', '"""Scale a Var.'))
    problems = twin_differences(str(tmp_path), "scale.py")
    assert problems == ['torch_impl/scale.py:2: differs from its twin and carries no marker: """Scale a tensor.',
                        'jittor_impl/scale.py:2: differs from its twin and carries no marker: """Scale a Var.']


def test_a_marker_left_on_a_line_that_no_longer_differs_fails(tmp_path):
    stale = JITTOR_TWIN.replace("x = x * factor  # framework: no in-place ops",
                                "x.mul_(factor)  # framework: no in-place ops")
    write_twins(tmp_path, TORCH_TWIN, stale)
    assert twin_differences(str(tmp_path), "scale.py") == [
        "torch_impl/scale.py:14: marked, but matches jittor_impl/scale.py:14 (remove the marker): "
        "x.mul_(factor)  # framework: in place",
        "jittor_impl/scale.py:14: marked, but matches torch_impl/scale.py:14 (remove the marker): "
        "x.mul_(factor)  # framework: no in-place ops",
    ]


def test_a_marker_on_one_side_of_matching_lines_fails(tmp_path):
    write_twins(tmp_path, TORCH_TWIN.replace("return x.view(-1)", "return x.view(-1)  # framework"), JITTOR_TWIN)
    assert twin_differences(str(tmp_path), "scale.py") == [
        "torch_impl/scale.py:15: marked, but matches jittor_impl/scale.py:15 (remove the marker): "
        "return x.view(-1)  # framework"]


def test_a_stale_docstring_marker_fails(tmp_path):
    same = JITTOR_TWIN.replace("A new Var: Jittor has no in-place ops.", "In place, as jt does.")
    write_twins(tmp_path, TORCH_TWIN, same)
    problems = twin_differences(str(tmp_path), "scale.py")
    assert problems == [
        "torch_impl/scale.py:12: marked, but matches jittor_impl/scale.py:12 (remove the marker): "
        "In place, as torch does.",
        "jittor_impl/scale.py:12: marked, but matches torch_impl/scale.py:12 (remove the marker): "
        "In place, as jt does."]


def test_a_marked_line_equal_to_a_line_elsewhere_in_its_twin_still_differs(tmp_path):
    """Only lines between the same matching neighbours are compared: a moved line is a difference."""
    torch_text = "a = 1\nb = 2  # framework\nc = 3\n"
    jittor_text = "a = 1\nc = 3\nb = 2  # framework\n"
    write_twins(tmp_path, torch_text, jittor_text)
    assert twin_differences(str(tmp_path), "scale.py") == []


def test_a_docstring_range_may_span_blank_lines(tmp_path):
    torch_text = '"""One.\n\nTwo torch.\n"""\n'
    jittor_text = '# framework: docstring lines 1-3\n"""One jittor.\n\nTwo jittor.\n"""\n'
    write_twins(tmp_path, '# framework: docstring line 3\n' + torch_text, jittor_text)
    assert twin_differences(str(tmp_path), "scale.py") == [
        'torch_impl/scale.py:2: differs from its twin and carries no marker: """One.']
    jittor_text = '# framework: docstring line 2\n"""One.\n\nTwo jittor.\n"""\n'
    write_twins(tmp_path, '# framework: docstring line 3\n' + torch_text, jittor_text)
    assert twin_differences(str(tmp_path), "scale.py") == [
        "jittor_impl/scale.py:1: the marker names line 2 of the string, blank or starting with # "
        "(never compared): # framework: docstring line 2",
        "jittor_impl/scale.py:4: differs from its twin and carries no marker: Two jittor."]


def test_malformed_markers_are_named(tmp_path):
    torch_text = TORCH_TWIN.replace("# framework: docstring line 2", "# framework: docstring line 7")
    jittor_text = JITTOR_TWIN.replace('    x = x * factor  # framework: no in-place ops',
                                      '    # framework\n    x = x * factor  # framework: docstring line 1')
    write_twins(tmp_path, torch_text, jittor_text)
    problems = twin_differences(str(tmp_path), "scale.py")
    assert "torch_impl/scale.py:10: the marker names line 7 of a string of 3 lines: " \
           "# framework: docstring line 7" in problems
    assert "jittor_impl/scale.py:14: a marker on a comment line marks nothing (put it at the end of the " \
           "line it marks): # framework" in problems
    assert "jittor_impl/scale.py:15: the docstring form of the marker goes on its own line above the " \
           "string: x = x * factor  # framework: docstring line 1" in problems


def test_a_hash_inside_a_string_is_no_marker(tmp_path):
    torch_text = 'NOTE = "see # framework"\n'
    jittor_text = 'NOTE = "see # framework, Jittor"\n'
    write_twins(tmp_path, torch_text, jittor_text)
    assert twin_differences(str(tmp_path), "scale.py") == [
        'torch_impl/scale.py:1: differs from its twin and carries no marker: NOTE = "see # framework"',
        'jittor_impl/scale.py:1: differs from its twin and carries no marker: NOTE = "see # framework, Jittor"']
