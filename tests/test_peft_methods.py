"""--peft METHOD (shared/model/peft_methods.py, */peft_modules.py): the parameter counts of peft,
training and resuming every method in both backends, checkpoints that name their method, and
bad flags refused before any work."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backends import training_backend as backend_class
from shared.model.checkpoint import read_checkpoint
from shared.model.config import GPT2Config
from shared.model.peft_methods import PeftSettings, trainable_line
from shared.model.params import parameter_counts, parameter_shapes
from shared.train.train_args import build_parser, model_config
from shared.train.trainer import TrainingInterrupted, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=1000, n_positions=128)
METHOD_FLAGS = {
    "full": [], "top2": ["--peft", "top2"], "bitfit": ["--peft", "bitfit"],
    "adapter": ["--peft", "adapter", "--adapter_dim", "8"],
    "prompt": ["--peft", "prompt", "--num_virtual_tokens", "4", "--prompt_init", "vocab"],
    "ptuning-mlp": ["--peft", "ptuning", "--num_virtual_tokens", "4", "--encoder_hidden_size", "16"],
    "ptuning-lstm": ["--peft", "ptuning", "--num_virtual_tokens", "3", "--ptuning_encoder", "lstm",
                     "--encoder_hidden_size", "8"],
    "prefix": ["--peft", "prefix", "--num_virtual_tokens", "4"],
    "prefix-projection": ["--peft", "prefix", "--num_virtual_tokens", "4",
                          "--prefix_projection", "16"],
}


def config_of(method, **kw):
    return GPT2Config(**SHAPE, peft=PeftSettings(method, **kw))


# ------------------------------------------------------------------------------ counting
def test_counts_follow_the_formulas_of_the_issue():
    e, n_layer, n = SHAPE["n_embd"], SHAPE["n_layer"], 5
    base = parameter_counts(GPT2Config(**SHAPE))[1]
    assert parameter_counts(GPT2Config(**SHAPE)) == (base, base)  # full fine-tuning
    assert parameter_counts(config_of("prompt", num_virtual_tokens=n)) == (n * e, base + n * e)
    prefix = n * n_layer * 2 * e
    assert parameter_counts(config_of("prefix", num_virtual_tokens=n)) == (prefix, base + prefix)
    assert parameter_counts(config_of("bitfit")) == ((11 * n_layer + 1) * e, base)
    adapter = n_layer * 2 * (e * 8 + 8 + 8 * e + e)
    assert parameter_counts(config_of("adapter", adapter_dim=8)) == (adapter, base + adapter)
    top2 = sum(np.prod(s) for name, s in parameter_shapes(GPT2Config(**SHAPE)).items()
               if name.startswith("transformer.h."))
    assert parameter_counts(config_of("top2"))[0] == top2  # two layers: every block


def test_the_line_is_peft_s():
    assert (trainable_line(7680, 125246976)
            == "trainable params: 7,680 || all params: 125,246,976 || trainable%: 0.0061")


def import_peft():
    """transformers + peft, the real clients (the test extra of scripts/install.sh)."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    return transformers, peft


@pytest.mark.parametrize("case", ["prompt", "prefix", "prefix-projection", "ptuning-mlp",
                                  "ptuning-lstm", "lora"])
def test_counts_equal_peft_s_on_a_transformers_gpt2(case, capsys):
    """peft's counts, and the line its print_trainable_parameters prints, character for character."""
    transformers, peft = import_peft()
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=SHAPE["n_embd"], n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"],
        vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["n_positions"]))
    n = 6
    if case == "prompt":
        cfg, ours = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n), \
            config_of("prompt", num_virtual_tokens=n)
    elif case.startswith("prefix"):
        hidden = 24 if case == "prefix-projection" else 0
        cfg = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n,
                                      prefix_projection=bool(hidden), encoder_hidden_size=hidden or 1)
        ours = config_of("prefix", num_virtual_tokens=n, prefix_projection=hidden)
    elif case.startswith("ptuning"):
        kind = case.split("-")[1]
        cfg = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=n,
                                       encoder_hidden_size=20,
                                       encoder_reparameterization_type=kind.upper())
        ours = config_of("ptuning", num_virtual_tokens=n, ptuning_encoder=kind,
                         encoder_hidden_size=20)
    else:
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
        ours = GPT2Config(**SHAPE, lora_attn_dim=4)
    peft_model = peft.get_peft_model(hf, cfg)
    assert parameter_counts(ours) == peft_model.get_nb_trainable_parameters()
    capsys.readouterr()
    peft_model.print_trainable_parameters()
    assert capsys.readouterr().out == trainable_line(*parameter_counts(ours)) + "\n"


# ------------------------------------------------------------------------------ training
def make_args(encoded, work_dir, method, backend="torch", extra=()):
    argv = ["--backend", backend, "--device", "cpu",
            "--train_data", str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
            "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--train_batch_size", "4",
            "--valid_batch_size", "8", "--seq_len", "64", "--max_step", "8", "--lr", "0.01",
            "--grad_acc", "2", "--clip", "1.0", "--log_interval", "4", "--eval_interval", "8",
            "--save_interval", "4", "--max_eval_batches", "2", "--random_seed", "5",
            "--work_dir", str(work_dir), "--no_progress", *METHOD_FLAGS[method], *extra]
    return build_parser().parse_args(argv)


def losses(work_dir):
    with open(os.path.join(work_dir, "train_log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


def resumed_run_matches(tmp_path, encoded, method, backend, weight_ulps=0):
    """One run of 8 steps, and one stopped after step 4 and resumed: the same losses and final
    weights (bit for bit, or at most `weight_ulps` units in the last place of each tensor's largest
    entry apart); returns the first run's summary."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    summary = train(make_args(encoded, once, method, backend), backend_class(backend))

    def stop(step):
        if step == 4:
            os.kill(os.getpid(), __import__("signal").SIGTERM)
    with pytest.raises(TrainingInterrupted):
        train(make_args(encoded, twice, method, backend), backend_class(backend), on_step=stop)
    train(make_args(encoded, twice, method, backend, extra=["--resume"]), backend_class(backend))
    assert losses(once) == losses(twice)
    final_once, final_twice = read_checkpoint(once / "model.8.pt"), read_checkpoint(twice / "model.8.pt")
    for name in final_once:
        # ulps of the tensor's largest entry: one ulp is 6e-8 at 0.5 but 1.2e-7 at 1.5
        bound = weight_ulps * np.spacing(np.abs(final_once[name]).astype(np.float32).max(initial=0))
        np.testing.assert_allclose(final_once[name], final_twice[name], rtol=0, atol=bound, err_msg=name)
    return summary


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_every_method_trains_and_resumes_bit_exact(tmp_path, encoded, method):
    """Resumed bit-exact (torch); the intermediate checkpoint holds the trained weights only; the
    summary counts as peft."""
    once = tmp_path / "once"
    summary = resumed_run_matches(tmp_path, encoded, method, "torch")
    trainable, total = parameter_counts(model_config(make_args(encoded, once, method)))
    assert (summary["trainable_params"], summary["all_params"]) == (trainable, total)
    saved = read_checkpoint(once / "model.4.pt")
    count = sum(int(np.prod(v.shape)) for v in saved.values())
    assert count == (total if method == "full" else trainable)


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_every_method_resumes_bit_exact_in_jittor(tmp_path, encoded, method):
    """Jittor's --resume per method: the trained weights and their optimizer state come back
    from the checkpoint exactly. One exception: Jittor's P-tuning LSTM encoder is not
    reproducible to the last bit within a process (the same 8 steps run twice in one process, or
    steps 5-8 after steps 1-4 versus in a fresh process, end up to 1 ulp apart in the encoder's
    weights: 6e-8 for a weight near 0.5, 1.2e-7 for one near 1.1 on another machine; two fresh
    processes agree bit for bit): the losses are equal, the weights within 1 ulp of each tensor's
    largest entry."""
    resumed_run_matches(tmp_path, encoded, method, "jittor",
                        weight_ulps=1 if method == "ptuning-lstm" else 0)


@pytest.mark.parametrize("method", ["prefix", "adapter", "ptuning-lstm", "bitfit"])
def test_both_backends_train_the_same_losses(tmp_path, encoded, method):
    runs = {b: tmp_path / b for b in ("torch", "jittor")}
    for backend, work_dir in runs.items():
        train(make_args(encoded, work_dir, method, backend=backend), backend_class(backend))
    np.testing.assert_allclose(losses(runs["jittor"]), losses(runs["torch"]), rtol=0, atol=5e-5)


# ------------------------------------------------------------------------------ bad input
def run_ft(*args):
    return subprocess.run([sys.executable, "scripts/gpt2_ft.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags,named", [
    (["--peft", "prompt", "--num_virtual_tokens", "0"], "--num_virtual_tokens"),
    (["--peft", "prefix", "--num_virtual_tokens", "1000"], "--num_virtual_tokens 1000"),
    (["--peft", "prefix", "--lora_dim", "4"], "--lora_dim"),
    (["--peft", "prompt", "--adapter_dim", "8"], "--adapter_dim"),
    (["--peft", "adapter", "--prefix_projection", "8"], "--prefix_projection"),
    (["--peft", "lora"], "--peft lora"),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, encoded, flags, named):
    work_dir = tmp_path / "out"
    proc = run_ft("--backend", "torch", "--device", "cpu", "--train_data",
                  str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
                  "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--seq_len", "64",
                  "--max_step", "2", "--work_dir", str(work_dir), "--no_progress", *flags)
    assert proc.returncode == 2 and named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not work_dir.exists()


def test_a_checkpoint_of_another_method_is_refused_naming_both(tmp_path, encoded):
    train(make_args(encoded, tmp_path / "prefix", "prefix"), backend_class("torch"))
    work_dir = tmp_path / "out"
    proc = run_ft("--backend", "torch", "--device", "cpu", "--train_data",
                  str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
                  "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--seq_len", "64",
                  "--max_step", "2", "--work_dir", str(work_dir), "--no_progress",
                  "--init_checkpoint", str(tmp_path / "prefix" / "model.8.pt"),
                  "--peft", "prompt", "--num_virtual_tokens", "4")
    assert proc.returncode == 2, proc.stderr
    assert "--peft prefix" in proc.stderr and "--peft prompt" in proc.stderr, proc.stderr
    assert not work_dir.exists()
    # without --peft, the checkpoint's own method is taken: it continues as prefix tuning
    args = make_args(encoded, tmp_path / "again", "full",
                     extra=["--init_checkpoint", str(tmp_path / "prefix" / "model.8.pt")])
    summary = train(args, backend_class("torch"))
    assert args.peft == "prefix" and summary["trainable_params"] == 4 * 2 * 2 * 32


# ------------------------------------------------------------------------ peft's format
@pytest.mark.parametrize("case", ["prompt", "ptuning-mlp", "ptuning-lstm", "prefix",
                                  "prefix-projection"])
def test_prompt_adapters_load_in_real_peft_with_the_same_logits_and_import_back(tmp_path, case):
    import torch

    from shared.model.hf_export import export_hf_model
    from shared.model.peft_export import export_prompt_adapter, import_prompt_adapter
    from shared.model.params import init_state_dict
    from torch_impl.model import GPT2LMModel
    transformers, peft = import_peft()
    settings = {"prompt": PeftSettings("prompt", num_virtual_tokens=4),
                "ptuning-mlp": PeftSettings("ptuning", num_virtual_tokens=4, encoder_hidden_size=16),
                "ptuning-lstm": PeftSettings("ptuning", num_virtual_tokens=3,
                                             ptuning_encoder="lstm", encoder_hidden_size=8),
                "prefix": PeftSettings("prefix", num_virtual_tokens=4),
                "prefix-projection": PeftSettings("prefix", num_virtual_tokens=4,
                                                  prefix_projection=16)}[case]
    config = GPT2Config(**dict(SHAPE, initializer_range=0.2), peft=settings)
    state = init_state_dict(config, seed=4)
    ours = GPT2LMModel(config).eval()
    ours.load_state_numpy(state)
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 1000, size=(2, 7)))
    with torch.no_grad():
        expected = ours(ids)[0].numpy()
    export_hf_model(state, config, tmp_path / "base")
    export_prompt_adapter(state, config, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    np.testing.assert_allclose(logits[:, -ids.shape[1]:], expected, atol=2e-5, rtol=1e-4)
    imported, back = import_prompt_adapter(tmp_path / "adapter", GPT2Config(**SHAPE))
    again = GPT2LMModel(GPT2Config(**SHAPE, peft=back)).eval()
    again.load_state_numpy({**{k: v for k, v in state.items() if k in
                               dict(again.named_parameters())}, **imported})
    with torch.no_grad():
        np.testing.assert_allclose(again(ids)[0].numpy(), expected, atol=2e-5, rtol=1e-4)


def test_methods_peft_cannot_express_are_refused_by_the_export(tmp_path):
    from shared.model.checkpoint import save_checkpoint
    from shared.model.params import init_state_dict
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, peft=PeftSettings("adapter", adapter_dim=4))
    save_checkpoint(tmp_path / "a.pt", init_state_dict(config), peft_settings=config.peft)
    proc = subprocess.run([sys.executable, "scripts/export_hf.py", "export", "--init_checkpoint",
                           str(tmp_path / "a.pt"), "--n_embd", "32", "--n_layer", "2",
                           "--n_head", "2", "--peft_dir", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--peft adapter has no peft" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_prompt_adapter_of_another_base_is_refused_naming_the_file(tmp_path):
    from shared.model.peft_export import export_prompt_adapter
    from shared.model.params import init_state_dict
    config = config_of("prefix", num_virtual_tokens=3)
    export_prompt_adapter(init_state_dict(config), config, tmp_path / "adapter")
    proc = subprocess.run([sys.executable, "scripts/export_hf.py", "import", "--peft_dir",
                           str(tmp_path / "adapter"), "--n_embd", "64", "--n_layer", "2",
                           "--n_head", "2", "--out", str(tmp_path / "back.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "adapter_config.json" in proc.stderr, proc.stderr
    assert "another base" in proc.stderr and not (tmp_path / "back.pt").exists()


def test_beam_search_script_decodes_a_peft_checkpoint_alike_in_both_backends(tmp_path, encoded,
                                                                             run_in_process):
    """gpt2_beam.py builds the prefix model from the checkpoint's own record (no --peft flag).
    In this process: the claim is the outputs (the pipeline tests start the script)."""
    train(make_args(encoded, tmp_path / "run", "prefix"), backend_class("torch"))
    lines = (encoded / "valid.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "queries.jsonl").write_text("".join(lines[:80]))
    outputs = {}
    for backend in ("torch", "jittor"):
        status, _, err = run_in_process(
            "gpt2_beam", "--backend", backend, "--device", "cpu",
            "--data", tmp_path / "queries.jsonl", "--n_embd", "32", "--n_layer", "2",
            "--n_head", "2", "--init_checkpoint", tmp_path / "run" / "model.8.pt",
            "--seq_len", "64", "--eval_len", "6", "--beam", "3", "--batch_size", "8",
            "--unique_contexts", "--work_dir", tmp_path / backend, "--no_progress")
        assert status == 0, err
        outputs[backend] = (tmp_path / backend / "beam_prediction.jsonl").read_text()
    assert outputs["torch"] == outputs["jittor"] and outputs["torch"].count("\n") >= 8
