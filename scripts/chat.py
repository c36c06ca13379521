#!/usr/bin/env python
"""Chat with an instruction-tuned GPT-2 (either backend): one message per line on stdin, the reply
printed token by token, e.g.
  python scripts/chat.py --backend torch --init_checkpoint runs/instruct-cpu/torch/model.200.pt \
      --n_embd 96 --n_layer 3 --n_head 4 --lora_dim 8 --lora_alpha 32 --temperature 0.7 --top_k 40
  printf 'Name a fruit.\nAnd another one?\n' | python scripts/chat.py ...   # scripted
Earlier turns stay in the prompt (Alpaca template) until the context window is full; then the
oldest go; a message too long for the window alone keeps its last tokens (stderr says how many
were dropped). `/reset` forgets them, `/quit`, end of input (Ctrl-D) or Ctrl-C ends the chat.
"""
import argparse
import sys

from backends import load_inference_model
from shared.runtime.arg_types import (non_negative_int, positive_int, seed_int, temperature,
                                      top_p_mass)
from shared.decode.chat_prompt import ChatHistory, TokenPrinter, template_size
from shared.model.checkpoint import CheckpointError
from shared.decode.inference_model import add_inference_model_args, inference_model_problems
from shared.model.peft_methods import input_positions
from shared.decode.sampling import EOT_ID, SamplingSettings
from shared.runtime.entry_point import run_stoppable
from shared.runtime.stop_signals import StopSignal
from shared.text.tokenizer import VocabError, load_tokenizer


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--temperature", type=temperature, default=0.7, help="0: greedy")
    p.add_argument("--top_k", type=non_negative_int, default=40,
                   help="keep the k most likely tokens (0: all)")
    p.add_argument("--top_p", type=top_p_mass, default=0.95, help="nucleus sampling mass (1: off)")
    p.add_argument("--max_new_tokens", type=positive_int, default=128,
                   help="longest reply, in tokens")
    p.add_argument("--seed", type=seed_int, default=10, help="reply n is drawn with seed + n")
    p.add_argument("--context", type=positive_int, default=None,
                   help="context window in tokens (default: the model's n_positions)")
    p.add_argument("--vocab", default=None, help="GPT-2 vocab folder (default: GPT2_VOCAB_DIR)")
    add_inference_model_args(p)
    return p


def chat(model, tokenizer, settings, seed, budget, lines, write, note=None):
    """Run the conversation over `lines` (an iterator of user messages); returns the turns.
    `note(line)`: where a cut message is reported (default: stderr)."""
    note = note or (lambda line: print(line, file=sys.stderr, flush=True))
    history = ChatHistory(tokenizer, budget)
    turn = 0
    write(">>> ")
    for line in lines:
        message = line.strip()
        if message == "/quit":
            break
        if message == "/reset":
            history.reset()
            write("(history cleared)\n>>> ")
            continue
        if not message:
            write(">>> ")
            continue
        dropped = history.dropped
        prompt = history.prompt_ids(message)
        if history.dropped > dropped:
            write(f"(dropped {history.dropped - dropped} oldest turn(s) to fit the context)\n")
        if history.cut:
            note(f"chat: message cut: dropped its first {history.cut} tokens, which do not fit "
                 f"the {budget}-token prompt budget (context window - --max_new_tokens + 1)")
        printer = TokenPrinter(tokenizer, write)
        model.sample(prompt, settings, seed + turn, 1, on_token=printer)
        reply = printer.finish().strip()
        history.add(message, reply)
        turn += 1
        write("\n>>> ")
    write("\n")
    return history.turns


def context_problem(parser, tokenizer, window, max_new_tokens):
    """Usage error (exit 2) when a `window`-token context cannot hold the prompt template, one
    message token and the reply (the last reply token is not fed back: + 1)."""
    template = template_size(tokenizer)
    need = template + 1 + max_new_tokens - 1
    if window < need:
        parser.error(f"--context {window} is too small: the prompt template takes {template} "
                     f"tokens; with one message token and --max_new_tokens {max_new_tokens} it "
                     f"needs --context >= {need}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = inference_model_problems(args)
    try:
        settings = SamplingSettings(temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                    eos_token_id=EOT_ID)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    try:
        tokenizer = load_tokenizer(args.vocab)
    except (VocabError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.context is not None:  # before the model loads
        context_problem(parser, tokenizer, args.context, settings.max_new_tokens)
    try:
        model = load_inference_model(args)
    except (VocabError, CheckpointError, OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_positions = input_positions(model.model.config)  # less a PEFT method's virtual tokens
    window = min(args.context or n_positions, n_positions)
    if window < (args.context or 0):
        print(f"chat: --context {args.context} exceeds the model's {n_positions} positions; "
              f"using {n_positions}", file=sys.stderr)
    context_problem(parser, tokenizer, window, settings.max_new_tokens)
    budget = window - settings.max_new_tokens + 1

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        chat(model, tokenizer, settings, args.seed, budget, sys.stdin, write)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP as a StopSignal: 128 + signum
        write("\n(interrupted)\n")
        return exc.exit_code if isinstance(exc, StopSignal) else 130
    return 0


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
