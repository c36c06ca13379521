"""torch.compile'd training on the CPU: `--compile_mode` reaches the trainer (the benchmark's
`torch+autotune` row builds it through the same flags), and a compiled step trains as the eager
one does (inductor only reorders float32 sums)."""
import numpy as np
import pytest

from backends import training_backend
from backends.benchmark_steps import train_args
from shared.model.config import GPT2Config

STEPS = 3


def tiny_config():
    return GPT2Config.from_model_card("gpt2.sm", n_embd=32, n_layer=2, n_head=2, lora_attn_dim=4,
                                      lora_attn_alpha=32, lora_dropout=0.0)


def train(variant):
    """Losses and LoRA weights after STEPS steps of the tiny model, built as the benchmark's row
    `variant` builds it."""
    trainer = training_backend("torch")(tiny_config(), train_args("torch", "cpu", "fp32",
                                                                  variant=variant))
    rng = np.random.default_rng(0)
    vocab = trainer.config.vocab_size
    batch = {"input": rng.integers(0, vocab, (2, 16)), "target": rng.integers(0, vocab, (2, 16)),
             "mask": np.ones((2, 16), np.float32)}
    losses = []
    for step in range(1, STEPS + 1):
        trainer.set_step(step)
        losses.append(trainer.forward_backward(batch, 1.0, 0.0))
        trainer.update(1e-2, 1.0)
    weights = {name: p.detach().numpy().copy() for name, p in trainer.params.items()}
    return trainer, trainer.fetch(losses), weights


@pytest.fixture(scope="module")
def eager_run():
    return train("torch")


@pytest.mark.parametrize("variant", ["torch+compile", "torch+autotune"])
def test_a_compiled_step_trains_as_the_eager_step(eager_run, variant):
    eager, eager_losses, eager_weights = eager_run
    compiled, losses, weights = train(variant)
    assert not eager.compiled and compiled.compiled
    assert eager.forward is eager.trained and compiled.forward is not compiled.trained
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    assert eager_losses[-1] < eager_losses[0]  # the steps train: the comparison is not of no-ops
    assert weights.keys() == eager_weights.keys()
    for name, value in weights.items():
        np.testing.assert_allclose(value, eager_weights[name], rtol=1e-4, atol=1e-6, err_msg=name)
