"""alignment.auto_diff on a port this project did not write (torchvision's ResNet-18 against
jittor.models' port: clean, a buffer difference found, planted bugs localized), on tiny twins
built here (dropout's alias, the weight map's errors, optimizer steps) and on GPT-2; kink-flip
recognition on constructed values. Small inputs (2 images of 32x32) keep it to about a minute."""
import numpy as np
import pytest

from alignment import auto_diff, port_bugs
from alignment.kink_flips import flip
from alignment.planted_bugs import Patches
from alignment.weight_transfer import WeightMismatch, assign_weights

IMAGES = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


def resnet(plant=None, correct=False):
    from alignment import torchvision_ports
    tm, jm = torchvision_ports.build("resnet18", seed=0)
    patches = Patches()
    if correct:
        port_bugs.unbiased_running_var(patches, jm)
    if plant:
        plant(patches, jm)
    return tm, jm, patches


def diff(plant=None, train=False, correct=False, **kw):
    tm, jm, patches = resnet(plant, correct)
    try:
        return auto_diff(tm, jm, (IMAGES,), train=train, **kw)
    finally:
        patches.undo()


def mlp_twins(p=0.5):
    import torch

    from jittor_impl.runtime import jt
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(p), torch.nn.ReLU(),
                             torch.nn.Linear(8, 3))
    jm = jt.nn.Sequential(jt.nn.Linear(6, 8), jt.nn.Dropout(p), jt.nn.ReLU(), jt.nn.Linear(8, 3))
    return tm, jm


X = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def clean_eval():
    return diff()


def test_a_clean_port_passes_in_eval_mode(clean_eval):
    result = clean_eval
    assert result.passed, [r["name"] for r in result.failing()]
    assert result.first_divergence == {"forward": None, "backward": None, "buffers": None,
                                       "steps": None}
    kinds = {r["kind"] for r in result.records}
    assert {"outputs", "inputs", "local_input_grads", "local_param_grads", "buffers"} <= kinds
    assert result.skipped_weights and all(n.endswith("num_batches_tracked")
                                          for n in result.skipped_weights)


def test_records_are_taken_at_hook_time(clean_eval):
    """torchvision's ReLU is in place: bn1's recorded output keeps its negative values, and the
    second call of a block's ReLU is recorded apart from the first."""
    names = {r["name"] for r in clean_eval.records if r["kind"] == "outputs"}
    assert {"bn1", "relu", "layer1.0.relu", "layer1.0.relu#2"} <= names
    from alignment import torchvision_ports
    from alignment.model_trace import record
    tm, _ = torchvision_ports.build("resnet18", seed=0)
    trace = record("torch", tm.eval(), ((IMAGES,), {}), lambda out: out.mean())
    assert trace.outputs["bn1"].min() < 0 <= trace.outputs["relu"].min()
    assert np.abs(trace.input_grads["layer1.0.conv1"]).sum() > 0


def test_the_porting_page_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/porting.md's lines, run as written in a scratch folder: the shipped port in train
    mode, whose buffers part at bn1 (the finding: Jittor's BatchNorm keeps the biased running
    variance), and the line it prints is the one the page shows."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "porting.md"), encoding="utf-8") as f:
        snippet = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "docs/porting.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"# {printed}\n" in snippet, printed
    shipped = namespace["result"]
    assert shipped.first_divergence["forward"] is None
    assert shipped.first_divergence["buffers"] == "bn1"
    assert {r["name"].rsplit(".", 1)[1] for r in shipped.failing("buffers")} >= {"running_var"}
    for name in ("auto_diff.md", "auto_diff.json", "auto_diff.png"):
        assert (tmp_path / "runs" / "resnet18-diff" / name).stat().st_size > 0


def test_buffers_agree_once_the_running_variance_is_corrected():
    """The finding fixed (alignment.port_bugs.unbiased_running_var): the buffers agree."""
    corrected = diff(train=True, correct=True)
    assert corrected.first_divergence["buffers"] is None, corrected.failing("buffers")
    assert corrected.rule["k"] == 64.0  # K_TRAIN_BATCHNORM


@pytest.mark.parametrize("bug", [
    "BatchNorm batch mean detached (backward only, layer1.1.bn2)",
    "residual connection dropped (layer2.1)",
])
def test_planted_bugs_are_localized(bug):
    model, plant, train, expected = port_bugs.PORT_BUGS[bug]
    result = diff(plant, train=train)
    assert not result.passed
    for key, value in expected.items():
        assert result.first_divergence[key] == value, result.first_divergence
    if expected.get("forward"):
        assert result.first_divergence["backward"] is None
        assert any("backward not judged" in n for n in result.notes)


def test_report_files(tmp_path):
    tm, jm = mlp_twins()
    result = auto_diff(tm, jm, (X,), out_dir=str(tmp_path / "report"))
    assert result.passed
    for name in ("auto_diff.md", "auto_diff.json", "auto_diff.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "first divergence: forward `None`" in (tmp_path / "report" / "auto_diff.md").read_text()


def test_jittor_dropout_alias_keeps_its_gradient():
    """Jittor's Dropout returns an alias of its input (same node): both records get the
    gradient, none reads zero; train mode turns dropout off in both frameworks."""
    from alignment.model_trace import record
    tm, jm = mlp_twins()
    assign_weights(tm, jm)
    trace = record("jittor", jm, ((X,), {}), lambda out: out.mean())
    assert np.abs(trace.input_grads["1"]).sum() > 0
    np.testing.assert_array_equal(trace.input_grads["1"], trace.output_grads["1"])
    result = auto_diff(tm, jm, (X,), train=True)
    assert result.passed, result.failing()


def test_weight_map_lists_every_mismatch():
    import torch

    from jittor_impl.runtime import jt
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    jm = jt.nn.Sequential(jt.nn.Linear(6, 8), jt.nn.ReLU(), jt.nn.Linear(8, 4))
    with pytest.raises(WeightMismatch) as error:
        assign_weights(tm, jm)
    message = str(error.value)
    assert "2.weight [3, 8] vs Jittor 2.weight [4, 8]" in message and "2.bias" in message
    assert "4 problems" not in message and "2 problems" in message

    class Renamed(jt.nn.Module):
        def __init__(self):
            self.first, self.act, self.last = jt.nn.Linear(6, 8), jt.nn.ReLU(), jt.nn.Linear(8, 3)

        def execute(self, x):
            return self.last(self.act(self.first(x)))
    with pytest.raises(WeightMismatch, match="8 problems"):
        assign_weights(tm, Renamed())
    mapping = assign_weights(tm, Renamed(), layer_map={"0": "first", "2": "last"})
    assert mapping.pairs["2.bias"] == "last.bias"
    result = auto_diff(tm, Renamed(), (X,), layer_map={"0": "first", "1": "act", "2": "last"})
    assert result.passed, result.failing()  # modules without weights are named in it too
    assert result.forward_order == ["0", "1", "2", "output"]


def test_steps_compare_weights_and_optimizer_state():
    import torch

    from jittor_impl.runtime import jt
    tm, jm = mlp_twins(0.0)
    sgd = (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
           lambda ps: jt.optim.SGD(ps, lr=0.1, momentum=0.9))
    result = auto_diff(tm, jm, (X,), steps=2, optimizers=sgd)
    assert result.passed and result.first_divergence["steps"] is None
    kinds = {r["kind"] for r in result.records}
    assert {"step_weights", "step_optimizer"} <= kinds
    tm, jm = mlp_twins(0.0)
    wrong = (sgd[0], lambda ps: jt.optim.SGD(ps, lr=0.1, momentum=0.8))
    result = auto_diff(tm, jm, (X,), steps=2, optimizers=wrong)
    assert result.first_divergence["forward"] is None
    assert result.first_divergence["steps"].startswith("step 2:")  # momentum shows at step 2


def test_bad_arguments_are_refused():
    tm, jm = mlp_twins()
    with pytest.raises(TypeError, match="inputs"):
        auto_diff(tm, jm, "not arrays")
    with pytest.raises(TypeError, match="optimizers"):
        auto_diff(tm, jm, (X,), steps=1)
    with pytest.raises(TypeError, match="loss_fn"):
        auto_diff(tm, jm, (X,), loss_fn=(len,))


def test_kink_flip_recognition():
    import torch
    relu6 = torch.nn.ReLU6()
    ref_x = np.array([7e-6, 1.0, -2.0, 6.5, 3.0] * 40)
    test_x = ref_x.copy()
    test_x[0] = -2e-6  # rounding put it on the other side of 0
    ref_g = np.where((ref_x > 0) & (ref_x < 6), 1.0, 0.0)
    test_g = np.where((test_x > 0) & (test_x < 6), 1.0, 0.0)
    found = flip(relu6, test_x, ref_x, test_g, ref_g, ref_g)
    assert found == {"module_type": "ReLU6", "elements": 1, "size": 200}
    wrong = test_g.copy()
    wrong[1] = 0.0  # a gradient that differs where the input is far from any kink: a bug
    assert flip(relu6, test_x, ref_x, wrong, ref_g, ref_g) is None
    assert flip(torch.nn.Linear(2, 2), test_x, ref_x, test_g, ref_g, ref_g) is None
    assert flip(relu6, test_x, ref_x, 1 - ref_g, ref_g, ref_g) is None  # not sparse


def test_gpt2_twins_through_auto_diff():
    from alignment import gpt2_trace
    from alignment.harness import seeded_state, tiny_config
    config = tiny_config(lora_dim=4)
    batch = gpt2_trace.random_batch(config, vocab=2000)
    tm, jm, inputs, options = gpt2_trace.auto_diff_case(config, seeded_state(config, 0), batch)
    clean = auto_diff(tm, jm, inputs, **options)
    assert clean.passed, [r["name"] for r in clean.failing()]
    assert clean.forward_order[-2:] == ["lm_head", "loss"]
    assert "transformer.h.0.attn.c_attn.lora_delta" in clean.forward_order
    _, plant, _, expected = port_bugs.PORT_BUGS["GPT-2 LayerNorm statistics detached (backward only)"]
    tm, jm, inputs, options = gpt2_trace.auto_diff_case(config, seeded_state(config, 0), batch)
    patches = Patches()
    plant(patches, jm)
    try:
        result = auto_diff(tm, jm, inputs, **options)
    finally:
        patches.undo()
    assert result.first_divergence["forward"] is None
    assert result.first_divergence["backward"] == expected["backward"]


def pair_twins(second_scale=1.0):
    """A model whose submodule `pair` returns a tuple of two tensors, both used; in the Jittor
    twin, `second_scale` != 1 changes the second only."""
    import torch

    from jittor_impl.runtime import jt

    class TorchPair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)

        def forward(self, x):
            return self.a(x), self.b(x)

    class TorchModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.head = TorchPair(), torch.nn.Linear(4, 3)

        def forward(self, x):
            first, second = self.pair(x)
            return self.head(first * second)

    class JittorPair(jt.nn.Module):
        def __init__(self):
            self.a, self.b = jt.nn.Linear(6, 4), jt.nn.Linear(6, 4)

        def execute(self, x):
            return self.a(x), self.b(x) * second_scale

    class JittorModel(jt.nn.Module):
        def __init__(self):
            self.pair, self.head = JittorPair(), jt.nn.Linear(4, 3)

        def execute(self, x):
            first, second = self.pair(x)
            return self.head(first * second)
    torch.manual_seed(0)
    return TorchModel(), JittorModel()


def test_every_tensor_output_is_traced():
    """A bug that changes only the second tensor a submodule returns is found at that submodule
    (tracing only the first output would pass `pair` and blame its consumer)."""
    clean = auto_diff(*pair_twins(), (X,))
    assert clean.passed, clean.failing()
    names = {r["name"] for r in clean.records if r["kind"] == "outputs"}
    assert {"pair.out[0]", "pair.out[1]", "pair.a", "pair.b", "head"} <= names
    assert "pair" in clean.forward_order and "pair" in clean.per_module
    result = auto_diff(*pair_twins(second_scale=1.5), (X,))
    by_name = {r["name"]: r for r in result.records if r["kind"] == "outputs"}
    assert by_name["pair.out[0]"]["passed"] and not by_name["pair.out[1]"]["passed"]
    assert result.first_divergence["forward"] == "pair"


def test_output_tensor_names():
    from alignment.model_trace import map_tensors, module_of, tensor_items
    is_tensor = lambda x: isinstance(x, np.ndarray)  # noqa: E731
    a, b, c = np.zeros(1), np.ones(1), np.full(1, 2.0)
    value = (a, {"key": b, "none": None}, [c, 3])
    assert [p for p, _ in tensor_items(value, is_tensor)] == ['[0]', '[1]["key"]', "[2][0]"]
    doubled = map_tensors(value, is_tensor, lambda path, x: x * 2)
    assert doubled[1]["key"][0] == 2.0 and doubled[2][1] == 3 and doubled[1]["none"] is None
    assert module_of('pair.out[1]["key"]') == "pair" and module_of("pair.b") == "pair.b"


def test_ports_script_refuses_unknown_parts(capsys):
    import importlib.util
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "auto_diff_ports", os.path.join(root, "scripts", "auto_diff_ports.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--out", "unused", "--parts", "planted,everything"])
    assert exit_info.value.code == 2
    assert "--parts: unknown ['everything']" in capsys.readouterr().err


def gate_twins(plant=None):
    """A model whose submodule `gate` takes two floating inputs, one inside a list and one by
    keyword: gate([a], b=b) = a * sigmoid(b), b computed in the root's own code. `plant` in
    the Jittor twin: "root" scales b where the root computes it (a forward bug in the second
    input's path), "gate" halves gate's gradient w.r.t. b (a backward-only bug)."""
    import torch

    from jittor_impl.runtime import jt

    class TorchGate(torch.nn.Module):
        def forward(self, parts, b=None):
            return parts[0] * torch.sigmoid(b)

    class TorchModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin_a, self.lin_b = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
            self.gate, self.head = TorchGate(), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.gate([self.lin_a(x)], b=torch.tanh(self.lin_b(x))))

    class JittorGate(jt.nn.Module):
        def execute(self, parts, b=None):
            if plant == "gate":  # forward right, gradient w.r.t. b halved
                b = b * 0.5 + (b * 0.5).stop_grad()
            return parts[0] * jt.sigmoid(b)

    class JittorModel(jt.nn.Module):
        def __init__(self):
            self.lin_a, self.lin_b = jt.nn.Linear(6, 4), jt.nn.Linear(6, 4)
            self.gate, self.head = JittorGate(), jt.nn.Linear(4, 3)

        def execute(self, x):
            b = jt.tanh(self.lin_b(x)) * (1.5 if plant == "root" else 1.0)
            return self.head(self.gate([self.lin_a(x)], b=b))
    torch.manual_seed(0)
    return TorchModel(), JittorModel()


def test_every_floating_input_is_traced():
    """Both inputs of `gate` are recorded (`gate.in[0][0]`, `gate.in["b"]`), with their own
    gradients; a bug in the second input's path is blamed where it is: forward, on the root's
    code that computes b (not on gate, whose first input agrees), backward, on gate (its
    gradient w.r.t. b), where tracing the first input alone blamed the root."""
    clean = auto_diff(*gate_twins(), (X,))
    assert clean.passed, clean.failing()
    by_kind = {}
    for r in clean.records:
        by_kind.setdefault(r["kind"], set()).add(r["name"])
    assert {"gate.in[0][0]", 'gate.in["b"]', "head", "lin_a"} <= by_kind["inputs"]
    assert {"gate.in[0][0]", 'gate.in["b"]'} <= by_kind["local_input_grads"]
    forward = auto_diff(*gate_twins("root"), (X,))
    assert forward.first_divergence["forward"] == "output", forward.first_divergence
    failing = {r["name"] for r in forward.failing("inputs")}
    assert 'gate.in["b"]' in failing and "gate.in[0][0]" not in failing
    backward = auto_diff(*gate_twins("gate"), (X,))
    assert backward.first_divergence["forward"] is None
    assert backward.first_divergence["backward"] == "gate", backward.first_divergence
    bad = {r["name"] for r in backward.failing("local_input_grads")}
    assert bad == {'gate.in["b"]'}, bad


def test_keyword_inputs_and_a_loss_pair():
    """Inputs as a dict of keyword arrays; a (torch_fn, jittor_fn) loss pair: agreeing losses
    pass, and a Jittor loss whose gradient differs (3x: a sum over the 3 outputs instead of
    their mean) is the backward verdict `loss`, the forward agreeing."""
    square = (lambda out: (out * out).mean(), lambda out: (out * out).mean())
    result = auto_diff(*gate_twins(), {"x": X}, loss_fn=square)
    assert result.passed, result.failing()
    assert "input.x" in {r["name"] for r in result.records if r["kind"] == "inputs"}
    wrong = (square[0], lambda out: (out * out).sum() / out.shape[0])
    result = auto_diff(*gate_twins(), {"x": X}, loss_fn=wrong)
    assert result.first_divergence["forward"] is None
    assert result.first_divergence["backward"] == "loss", result.first_divergence


def test_steps_find_jittors_adam_eps_placement():
    """Jittor's Adam adds eps before the bias correction (eps / sqrt(1 - beta2^t) in torch's
    terms): with eps 1e-3 the weights part after step 1; with torch's placement
    (port_bugs.torch_style_adam) weights and both moments agree."""
    import torch

    from jittor_impl.runtime import jt
    torch_adam = lambda ps: torch.optim.Adam(ps, lr=0.1, eps=1e-3)  # noqa: E731
    shipped = auto_diff(*mlp_twins(0.0), (X,), steps=1,
                        optimizers=(torch_adam, lambda ps: jt.optim.Adam(ps, lr=0.1, eps=1e-3)))
    assert shipped.first_divergence["forward"] is None
    assert shipped.first_divergence["steps"].startswith("step 1:"), shipped.first_divergence
    fixed = auto_diff(*mlp_twins(0.0), (X,), steps=2, optimizers=(
        torch_adam, lambda ps: port_bugs.torch_style_adam(ps, lr=0.1, eps=1e-3)))
    assert fixed.passed, fixed.failing()
    state = {r["name"].rsplit("@", 1)[0].rsplit(".", 1)[1] for r in fixed.records
             if r["kind"] == "step_optimizer"}
    assert state == {"exp_avg", "exp_avg_sq"}
