"""A chat with an instruction-tuned GPT-2: the multi-turn prompt and printing tokens as they come.

The conversation is written in the Alpaca template the model was tuned on (`instruct_data.py`):
the preamble once, then each turn as `### Instruction:` / `### Response:`, the last response
left open for the model. It must fit the context window together with the reply: the oldest
turns are dropped first; a single message longer than the window keeps its last tokens, inside
the template (preamble, instruction and response headers stay), and the chat says how many
tokens it dropped. A window too small for the template and one message token is refused.

Tokens are printed as they are drawn; byte-level BPE can split a UTF-8 character over two
tokens, so the printer holds back text that ends in an incomplete character.
"""
from __future__ import annotations

from shared.text.instruct_data import PREAMBLE, RESPONSE_HEADER


INSTRUCTION_HEADER = "### Instruction:\n"


def turn_text(user: str, reply: str | None = None) -> str:
    text = f"{INSTRUCTION_HEADER}{user}\n\n{RESPONSE_HEADER}"
    return text if reply is None else text + reply + "\n\n"


def template_ids(tokenizer) -> tuple:
    """(preamble, instruction header, response header) token ids: the prompt around a message."""
    return (tokenizer.encode(PREAMBLE + "\n\n"), tokenizer.encode(INSTRUCTION_HEADER),
            tokenizer.encode("\n\n" + RESPONSE_HEADER))


def template_size(tokenizer) -> int:
    """Tokens of the prompt template around one message."""
    return sum(map(len, template_ids(tokenizer)))


class ChatHistory:
    """Finished (user, reply) turns and the prompt for the next reply within `budget` tokens."""

    def __init__(self, tokenizer, budget: int):
        need = template_size(tokenizer) + 1
        if budget < need:
            raise ValueError(f"no room for a prompt: {budget} tokens, but the template and one "
                             f"message token take {need}")
        self.tokenizer, self.budget = tokenizer, budget
        self.turns = []
        self.dropped = 0  # turns dropped to fit the window, over the whole chat
        self.cut = 0  # tokens cut from the start of the last message to fit the window

    def prompt_ids(self, user: str) -> list:
        """Token ids of preamble + the kept turns + the new message; drops old turns to fit,
        then cuts the message to its last tokens (`self.cut`: how many went)."""
        head, instruction, response = template_ids(self.tokenizer)
        current = self.tokenizer.encode(turn_text(user))
        past = [self.tokenizer.encode(turn_text(u, r)) for u, r in self.turns]
        while past and len(head) + sum(map(len, past)) + len(current) > self.budget:
            past.pop(0)
            self.turns.pop(0)
            self.dropped += 1
        self.cut = 0
        if len(head) + len(current) > self.budget:  # the message alone is too long
            message = self.tokenizer.encode(user)
            room = self.budget - len(head) - len(instruction) - len(response)
            self.cut = max(0, len(message) - room)
            return head + instruction + message[-room:] + response
        return head + [t for turn in past for t in turn] + current

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
