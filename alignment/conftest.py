"""Pytest hooks of the alignment suite: the comparison table in the terminal summary, always,
and the report files under $ALIGNMENT_REPORT_DIR when that variable is set."""
import os

from alignment.harness import RECORDER

REPORT_DIR_VARIABLE = "ALIGNMENT_REPORT_DIR"


def pytest_terminal_summary(terminalreporter):
    if not RECORDER.records:
        return
    terminalreporter.section("alignment comparisons (worst per group)")
    for line in RECORDER.summary_lines():
        terminalreporter.write_line(line)
    folder = os.environ.get(REPORT_DIR_VARIABLE)
    if folder:
        report = os.path.join(folder, "alignment_report.md")
        terminalreporter.write_line(f"report: {report} (+ .json)")


def pytest_sessionfinish(session):
    folder = os.environ.get(REPORT_DIR_VARIABLE)
    if folder and os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: one report per worker
        folder = os.path.join(folder, os.environ["PYTEST_XDIST_WORKER"])
    if folder and RECORDER.records:
        RECORDER.write(folder)
