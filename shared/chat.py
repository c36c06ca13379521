"""A chat with an instruction-tuned GPT-2: the multi-turn prompt and printing tokens as they come.

The conversation is written in the Alpaca template the model was tuned on (`instruct_data.py`):
the preamble once, then each turn as `### Instruction:` / `### Response:`, the last response
left open for the model. It must fit the context window together with the reply: the oldest
turns are dropped first; a single message longer than the window keeps its last tokens.

Tokens are printed as they are drawn; byte-level BPE can split a UTF-8 character over two
tokens, so the printer holds back text that ends in an incomplete character.
"""
from __future__ import annotations

from .instruct_data import PREAMBLE, RESPONSE_HEADER


def turn_text(user: str, reply: str | None = None) -> str:
    text = f"### Instruction:\n{user}\n\n{RESPONSE_HEADER}"
    return text if reply is None else text + reply + "\n\n"


class ChatHistory:
    """Finished (user, reply) turns and the prompt for the next reply within `budget` tokens."""

    def __init__(self, tokenizer, budget: int):
        if budget < 1:
            raise ValueError(f"no room for a prompt: budget {budget} tokens")
        self.tokenizer, self.budget = tokenizer, budget
        self.turns = []
        self.dropped = 0  # turns dropped to fit the window, over the whole chat

    def prompt_ids(self, user: str) -> list:
        """Token ids of preamble + the kept turns + the new message; drops old turns to fit."""
        head = self.tokenizer.encode(PREAMBLE + "\n\n")
        current = self.tokenizer.encode(turn_text(user))
        past = [self.tokenizer.encode(turn_text(u, r)) for u, r in self.turns]
        while past and len(head) + sum(map(len, past)) + len(current) > self.budget:
            past.pop(0)
            self.turns.pop(0)
            self.dropped += 1
        ids = head + [t for turn in past for t in turn] + current
        return ids[-self.budget:]

    def add(self, user: str, reply: str):
        self.turns.append((user, reply))

    def reset(self):
        self.turns = []


class TokenPrinter:
    """`on_token` callback for `generate`: writes the new text of one sample as it grows."""

    def __init__(self, tokenizer, write):
        self.tokenizer, self.write = tokenizer, write
        self.tokens, self.shown = [], 0

    def __call__(self, row, token):
        if row != 0:
            return
        self.tokens.append(int(token))
        text = self.tokenizer.decode(self.tokens)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next byte
            return
        self.write(text[self.shown:])
        self.shown = len(text)

    def finish(self) -> str:
        """Write what is still held back; the full reply text."""
        text = self.tokenizer.decode(self.tokens)
        self.write(text[self.shown:])
        self.shown = len(text)
        return text
