# framework: docstring line 7
"""GPT-2 as a text classifier, in Jittor (twin: torch_impl/classifier.py, same structure).

The head (`score`, shared/model/classifier_params.py) reads the final hidden state of each row's last
real token (`lengths - 1`; padding after it is never seen, attention being causal). The loss is
the class-weighted mean cross-entropy (weights 1 without class weights). `ClassifierBackend` is
the training backend of shared/train/trainer.py for this model: it builds the classifier, marks the
`--trainable` part and replaces the language-model loss; everything else is `JittorBackend`'s.
"""
import numpy as np

from shared.model.checkpoint import load_for_model, read_checkpoint
from shared.model.classifier_params import init_head, is_head_name, is_trainable, split_head
from shared.model.config import GPT2Config
from shared.model.params import init_state_dict, is_lora_name

from .lora import mark_trainable
from .model import Conv1D, GPT2Base, GPT2Model
from .runtime import jt  # framework
from .train import JittorBackend  # framework

nn = jt.nn  # framework


def last_token_states(hidden_states, lengths):
    """(B, T, E) hidden states -> (B, E) at position lengths - 1 of each row."""
    batch, width, embd = hidden_states.shape
    rows = jt.arange(batch).int64() * width + lengths - 1  # framework
    return hidden_states.reshape(batch * width, embd)[rows]


def classification_loss(logits, labels, class_weights=None):
    """sum_i w[y_i] * -log p(y_i | x_i) / sum_i w[y_i]."""
    logprobs = nn.log_softmax(logits.float32(), dim=-1)  # framework
    nll = -logprobs.gather(1, labels.reshape(-1, 1)).reshape(-1)
    if class_weights is None:
        weights = jt.ones_like(nll)
    else:
        weights = jt.array(class_weights)[labels]  # framework
    return (nll * weights).sum() / weights.sum()


class GPT2Classifier(GPT2Base):
    """GPT-2 body + linear head; initialised from seeded numpy like GPT2LMModel."""

    def __init__(self, config: GPT2Config, num_classes: int, seed: int = 0, class_weights=None):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.transformer = GPT2Model(config)
        self.score = Conv1D(config.n_embd, num_classes)
        self.class_weights = None if class_weights is None else \
            np.asarray(class_weights, dtype=np.float32)
        self.base_loaded = False
        self.load_state_numpy({**init_state_dict(config, seed), **init_head(config, num_classes, seed)})

    def execute(self, input_ids, lengths, labels=None):
        hidden_states, _ = self.transformer(input_ids)
        logits = self.score(last_token_states(hidden_states, lengths))
        if labels is None:
            return logits
        return logits, classification_loss(logits, labels, self.class_weights)

    # ------------------------------------------------------------------ weights in and out
    def load_weight(self, state_or_path, base_loaded=None):
        """A classifier checkpoint, or a GPT-2 one of any supported layout for the body."""
        if isinstance(state_or_path, dict):
            raw, source = state_or_path, "<state dict>"
        else:
            raw, source = read_checkpoint(state_or_path), str(state_or_path)
        body, head = split_head(raw, self.config, self.num_classes, source)
        base_loaded = self.base_loaded if base_loaded is None else base_loaded
        state = load_for_model(body, self.config, base_loaded, source) if body else {}
        return self.load_model_state(state, head)

    def state_dict_numpy(self, lora_only: bool = False) -> dict:
        """Canonical {name: float32 array}; `lora_only` keeps LoRA and head weights."""
        return {name: param.float32().numpy().copy()  # framework
                for name, param in self.named_parameters()
                if not lora_only or is_lora_name(name) or is_head_name(name)}


class ClassifierBackend(JittorBackend):  # framework
    """JittorBackend training GPT2Classifier on {"input", "length", "label"} batches."""  # framework

    def build_model(self, config, args):
        model = GPT2Classifier(config, args.num_classes, seed=args.random_seed,
                               class_weights=args.class_weights)
        if args.init_checkpoint:
            model.load_weight(args.init_checkpoint)
        mark_trainable(model, lambda name: is_trainable(name, args.trainable, config.n_layer))
        return model

    def batch_loss(self, data, label_smooth=0.0):
        _, loss = self.forward(data["input"], data["length"], data["label"])
        return loss

    def predict_logits(self, batch):
        """Class logits of one batch as a numpy array."""
        self.model.eval()
        data = self.to_device(batch)
        with jt.no_grad(), self.autocast():  # framework
            logits = self.forward(data["input"], data["length"])
        return logits.float32().numpy()  # framework

    def load_trainable_checkpoint(self, path):
        self.model.load_weight(path, base_loaded=True)
