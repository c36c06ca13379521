"""The chat (shared/decode/chat_prompt.py, scripts/chat.py): history within the context window, tokens printed
as they come without broken characters, a scripted conversation over stdin, EOF and /quit."""
import os
import subprocess
import sys

import pytest

from shared.decode.chat_prompt import (ChatHistory, TokenPrinter, template_ids, template_size,
                                       turn_text)
from shared.model.config import GPT2Config
from shared.text.instruct_data import PREAMBLE
from shared.model.params import init_state_dict
from shared.text.tokenizer import load_tokenizer

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
    assert history.cut == 0


def test_a_message_longer_than_the_window_keeps_its_end_inside_the_template(tok):
    template = template_size(tok)
    with pytest.raises(ValueError, match=f"no room for a prompt: {template} tokens, but the "
                                         f"template and one message token take {template + 1}"):
        ChatHistory(tok, template)
    tiny = ChatHistory(tok, template + 5)
    tiny.add("an earlier question", "its answer")
    message = "a long message " * 10
    ids = tiny.prompt_ids(message)
    head, instruction, response = template_ids(tok)
    kept = tok.encode(message)[-5:]
    assert ids == head + instruction + kept + response and len(ids) == template + 5
    assert tiny.cut == len(tok.encode(message)) - 5 and tiny.dropped == 1
    assert tok.decode(ids).startswith(PREAMBLE + "\n\n### Instruction:\n")
    assert tok.decode(ids).endswith(tok.decode(kept) + "\n\n### Response:\n")
    assert tiny.prompt_ids("short") == head + tok.encode(turn_text("short"))
    assert tiny.cut == 0


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
    from shared.model.checkpoint import save_checkpoint
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
    assert out.stderr == ""  # no message was cut


def test_chat_says_when_it_cuts_and_refuses_a_context_too_small(tmp_path, vocab_dir, tok):
    from shared.model.checkpoint import save_checkpoint
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", init_state_dict(config, 4))
    argv = [sys.executable, os.path.join(ROOT, "scripts", "chat.py"), "--backend", "torch",
            "--device", "cpu", "--init_checkpoint", ckpt, *SHAPE, "--vocab", vocab_dir,
            "--max_new_tokens", "5", "--seed", "1"]
    template = template_size(tok)
    long_message = ("please read all of this " * 20).strip()  # chat strips each line
    budget = template + 10 - 5 + 1
    out = subprocess.run(argv + ["--context", str(template + 10)],
                         input=f"{long_message}\nshort\n", capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    cut = len(tok.encode(long_message)) - (budget - template)
    assert out.stderr.splitlines() == [
        f"chat: message cut: dropped its first {cut} tokens, which do not fit the {budget}-token "
        f"prompt budget (context window - --max_new_tokens + 1)"]
    too_small = subprocess.run(argv + ["--context", "10"], input="hi\n", capture_output=True,
                               text=True, cwd=ROOT, timeout=300)
    assert too_small.returncode == 2 and too_small.stdout == ""
    assert too_small.stderr.splitlines()[-1] == (
        f"chat.py: error: --context 10 is too small: the prompt template takes {template} "
        f"tokens; with one message token and --max_new_tokens 5 it needs --context >= "
        f"{template + 5}")
    capped = subprocess.run(argv + ["--context", "5000"], input="/quit\n", capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert capped.returncode == 0
    assert capped.stderr == ("chat: --context 5000 exceeds the model's 1024 positions; using "
                             "1024\n")


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "nan", "must be a finite number >= 0, got 'nan'"),
    ("--temperature", "-1", "must be a finite number >= 0, got '-1'"),
    ("--top_p", "0", "must be a finite number in (0, 1], got '0'"),
    ("--top_k", "-3", "must be an integer >= 0, got '-3'"),
    ("--context", "0", "must be an integer >= 1, got '0'"),
])
def test_chat_refuses_bad_sampling_flags_before_any_work(flag, value, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "chat.py"), "--backend",
                           "torch", "--init_checkpoint", "missing.pt", f"{flag}={value}"],
                          input="hi\n", capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == f"chat.py: error: argument {flag}: {message}"
