"""The attention switch (`GPT2Base.set_attention`, torch_impl/model.py) reaches every block of
both models built on the GPT-2 body, the language model and the classifier (whose own switch once
set an attribute the attention no longer read, so --attn never reached it)."""
import pytest

from shared.model.config import GPT2Config
from torch_impl.classifier import GPT2Classifier
from torch_impl.model import GPT2LMModel

CONFIG = GPT2Config(vocab_size=101, n_positions=16, n_embd=16, n_layer=2, n_head=2)


@pytest.mark.parametrize("build", [lambda: GPT2LMModel(CONFIG), lambda: GPT2Classifier(CONFIG, 2)],
                         ids=["lm", "classifier"])
def test_set_attention_reaches_every_block(build):
    model = build()
    for impl in ("math", "sdpa", "math"):
        model.set_attention(impl)
        assert [block.attn.attn_impl for block in model.transformer.h] == [impl] * CONFIG.n_layer
    with pytest.raises(ValueError, match="attention implementation must be one of"):
        model.set_attention("flash")
