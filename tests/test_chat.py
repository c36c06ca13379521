"""The chat (shared/chat.py, scripts/chat.py): history within the context window, tokens printed
as they come without broken characters, a scripted conversation over stdin, EOF and /quit."""
import os
import subprocess
import sys

import pytest

from shared.chat import ChatHistory, TokenPrinter, turn_text
from shared.config import GPT2Config
from shared.instruct_data import PREAMBLE
from shared.params import init_state_dict
from shared.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = ["--n_embd", "32", "--n_layer", "2", "--n_head", "2"]


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return load_tokenizer(vocab_dir)


def test_history_keeps_the_newest_turns_that_fit(tok):
    head = len(tok.encode(PREAMBLE + "\n\n"))
    turns = [(f"question {i}", f"answer number {i}") for i in range(4)]
    sizes = [len(tok.encode(turn_text(u, r))) for u, r in turns]
    current = len(tok.encode(turn_text("last one")))
    budget = head + sizes[2] + sizes[3] + current  # room for the two newest turns exactly
    history = ChatHistory(tok, budget)
    for u, r in turns:
        history.add(u, r)
    ids = history.prompt_ids("last one")
    assert len(ids) == budget and history.dropped == 2
    assert tok.decode(ids) == (PREAMBLE + "\n\n" + turn_text(*turns[2]) + turn_text(*turns[3])
                               + turn_text("last one"))
    history.reset()
    assert tok.decode(history.prompt_ids("hi")) == PREAMBLE + "\n\n" + turn_text("hi")
    tiny = ChatHistory(tok, 5)  # a message longer than the window keeps its end
    assert tiny.prompt_ids("a long message " * 10) == tok.encode(
        PREAMBLE + "\n\n" + turn_text("a long message " * 10))[-5:]


def test_printer_never_writes_half_a_character(tok):
    text = "你好, naïve café 🙂!"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # some characters span several tokens
    written = []
    printer = TokenPrinter(tok, written.append)
    for token in ids:
        printer(0, token)
        printer(1, 0)  # other samples are ignored
    assert printer.finish() == text
    assert "".join(written) == text and not any("\ufffd" in w for w in written)


def test_scripted_chat_over_stdin(tmp_path, vocab_dir):
    from shared.checkpoint import save_checkpoint
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", init_state_dict(config, 4))
    argv = [sys.executable, os.path.join(ROOT, "scripts", "chat.py"), "--backend", "torch",
            "--device", "cpu", "--init_checkpoint", ckpt, *SHAPE, "--vocab", vocab_dir,
            "--max_new_tokens", "5", "--context", "50", "--seed", "1"]
    out = subprocess.run(argv, input="Hello there.\n\nTell me more please.\n/reset\nAgain.\n",
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(">>> ") and out.stdout.count(">>> ") == 6
    assert "(history cleared)" in out.stdout
    assert "(dropped 1 oldest turn(s) to fit the context)" in out.stdout  # 50 tokens hold one turn
    again = subprocess.run(argv, input="Hello there.\n\nTell me more please.\n/reset\nAgain.\n",
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.stdout == out.stdout  # seeded: the same replies
    quit_early = subprocess.run(argv, input="/quit\nnever read\n", capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
    assert quit_early.returncode == 0 and quit_early.stdout == ">>> \n"
