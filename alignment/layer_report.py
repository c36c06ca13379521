"""The per-layer report of scripts/diff_layers.py: GPT-2's checkpoint through alignment.auto_diff
(both twins and the float64 reference, traced on real batches, compared tensor by tensor),
written as DIR/diff_layers.{md,json,png}. What is GPT-2's own here: the checkpoint, the batches
(alignment.gpt2_trace.auto_diff_case says how auto_diff is called on the twins) and the table
by block (`layer_of`).

The JSON holds one record per compared tensor (alignment.compare.check_tensor's fields, the
batch, and "explained" where auto_diff accounts for a failure: gradients after a forward
divergence, a kink flip) and a top-level "first_divergence": {"forward": module or null,
"backward": module or null} with module names as in the checkpoints (e.g.
transformer.h.3.mlp), the first over the batches. The PNG plots each module's output error
(forward) and output-gradient error (backward) against float64, on a log scale, for torch fp32
and Jittor: where the Jittor line leaves torch's, the twins part.
"""
from __future__ import annotations

import os
import re

from shared.runtime.atomic import atomic_group, write_json, write_text

from .gpt2_trace import auto_diff_case, batch_inputs
from .port_diff import auto_diff, per_module
from .port_diff_report import plot


def run(config, state, batches, precision="fp32", device="cpu", label_smooth=0.0,
        jittor_model_hook=None, dropout: float = 0.0) -> dict:
    """auto_diff on every batch; returns the JSON document (see module doc).
    `jittor_model_hook(model)`: called on each Jittor model before tracing (bug planting)."""
    from .gpt2_trace import build_jittor
    records, divergence, per_layer, notes, flips = [], {"forward": None, "backward": None}, {}, [], []
    order, rule = [], {}
    for index, batch in enumerate(batches):
        jm = build_jittor(config, state, dropout=dropout)
        if jittor_model_hook:
            jittor_model_hook(jm)
        tm, jm, inputs, options = auto_diff_case(config, state, batch_inputs(batch), label_smooth,
                                                 dropout, precision, device, jittor_model=jm)
        result = auto_diff(tm, jm, inputs, **options)
        order, rule = result.forward_order, result.rule
        records += [dict(r, batch=index) for r in result.records]
        for direction in divergence:
            divergence[direction] = divergence[direction] or result.first_divergence[direction]
        per_module(result.records, per_layer)
        notes += [f"batch {index}: {n}" for n in result.notes]
        flips += [dict(f, batch=index) for f in result.kink_flips]
    failing = [r for r in records if not r["passed"] and not r.get("explained")]
    return {"first_divergence": divergence, "passed": not failing, "failing": len(failing),
            "explained": sum(1 for r in records if not r["passed"] and r.get("explained")),
            "compared": len(records), "precision": precision, "device": device, "rule": rule,
            "forward_order": order, "per_module": per_layer, "notes": notes, "kink_flips": flips,
            "records": records}


def _max(a, b):
    return None if a is None or b is None else max(a, b)


def _fmt(v):
    return "non-finite" if v is None else f"{v:.2e}"


def layer_of(module: str) -> str:
    """transformer.h.3.mlp -> h.3; embeddings, ln_f, the head and the loss keep their names."""
    m = re.match(r"transformer\.h\.(\d+)", module)
    return f"h.{m.group(1)}" if m else module.replace("transformer.", "")


def per_layer_worst(document: dict) -> list:
    """[(layer, worst torch err, worst jittor err) for outputs and output gradients], in order."""
    rows = {}
    for module in document["forward_order"]:
        stats = document["per_module"].get(module)
        if stats is None:
            continue
        row = rows.setdefault(layer_of(module), [0.0, 0.0, 0.0, 0.0])
        row[0], row[1] = _max(row[0], stats["outputs"][0]), _max(row[1], stats["outputs"][1])
        row[2] = _max(row[2], stats["output_grads"][0])
        row[3] = _max(row[3], stats["output_grads"][1])
    return [(layer, *values) for layer, values in rows.items()]


def markdown(document: dict, title: str = "Per-layer differences", note: str = "") -> str:
    fd = document["first_divergence"]
    rule = document["rule"]
    lines = [f"# {title}", "", note, "" if note else None,
             f"- precision {document['precision']} on {document['device']}; "
             f"{document['compared']} tensors compared, {document['failing']} failing"
             + (f", {document['explained']} more differ as explained by alignment.auto_diff "
                "(see the notes)" if document.get("explained") else ""),
             f"- rule: Jittor's relative L2 error against float64 <= {rule.get('k')} x torch's "
             f"+ {rule.get('floor', 0):.2g} (alignment/compare.py)",
             f"- **first divergence: forward `{fd['forward']}`, backward `{fd['backward']}`**",
             *[f"- note: {n}" for n in document.get("notes", [])],
             "", "## Worst error against float64 per layer (relative L2)", "",
             "| layer | forward torch | forward jittor | backward torch | backward jittor |",
             "|---|---|---|---|---|"]
    lines = [x for x in lines if x is not None]
    for layer, ft, fj, bt, bj in per_layer_worst(document):
        lines.append(f"| {layer} | {_fmt(ft)} | {_fmt(fj)} | {_fmt(bt)} | {_fmt(bj)} |")
    failing = [r for r in document["records"] if not r["passed"] and not r.get("explained")]
    lines += ["", f"## Failing tensors ({len(failing)})", ""]
    if failing:
        lines += ["| batch | kind | tensor | err jittor | err torch | bound | cosine | why |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in failing[:40]:
            f = lambda v: "-" if v is None else f"{v:.2e}"
            lines.append(f"| {r['batch']} | {r['kind']} | {r['name']} | {f(r['err_test'])} | "
                         f"{f(r['err_base'])} | {f(r['bound'])} | "
                         f"{'-' if r['cosine'] is None else format(r['cosine'], '.6f')} | {r['why']} |")
        if len(failing) > 40:
            lines.append(f"| ... | | {len(failing) - 40} more in diff_layers.json | | | | |")
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def write(document: dict, out_dir: str, title: str = "Per-layer differences", note: str = ""):
    document["per_layer_worst"] = [
        dict(zip(("layer", "forward_torch", "forward_jittor", "backward_torch", "backward_jittor"), row))
        for row in per_layer_worst(document)]
    with atomic_group(out_dir):  # all four files, or (a full disk, a signal) none of them
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, "diff_layers.json"), document)
        write_text(os.path.join(out_dir, "diff_layers.md"), markdown(document, title, note))
        plot(document, os.path.join(out_dir, "diff_layers.png"),
             label=lambda name: name.replace("transformer.", ""))
        write_text(os.path.join(out_dir, "report_section.md"), per_layer_section(document))


def per_layer_section(document: dict) -> str:
    """work.sh's report section (alignment.report_sections), from `run`'s document or
    diff_layers.json: `markdown`'s body with its headings nested under the section's."""
    body = markdown(document, title="x").split("\n", 2)[2]
    body = body.replace("\n## ", "\n### ")  # its parts nest under the section's heading
    return "## Per-layer check (torch, Jittor and float64)\n" + body


def terminal_summary(document: dict) -> list:
    fd = document["first_divergence"]
    lines = [f"{layer:>12}  fwd torch {_fmt(ft)} jittor {_fmt(fj)}   bwd torch {_fmt(bt)} jittor {_fmt(bj)}"
             for layer, ft, fj, bt, bj in per_layer_worst(document)]
    lines.append(f"{document['compared']} tensors, {document['failing']} failing; first divergence: "
                 f"forward {fd['forward']}, backward {fd['backward']}")
    return lines



# ------------------------------------------------------------------ from checkpoints (the command)
def load_state(config, init_checkpoint=None, lora_checkpoint=None, seed: int = 1) -> dict:
    """Canonical numpy weights of the checkpoint(s), through the torch twin's loader (the seeded
    initialisation where no checkpoint is given)."""
    from torch_impl.model import GPT2LMModel
    model = GPT2LMModel(config, seed=seed)
    for path in (init_checkpoint, lora_checkpoint):
        if path:
            model.load_weight(path)
    return model.state_dict_numpy()


def from_checkpoints(config, data, out_dir, init_checkpoint=None, lora_checkpoint=None,
                     seed: int = 1, seq_len: int = 512, batch_size: int = 4, batches: int = 1,
                     precision: str = "fp32", device: str = "cpu", label_smooth: float = 0.0,
                     plant: str = None) -> dict:
    """scripts/diff_layers.py's work: trace `batches` validation batches of the encoded jsonl
    `data`, write OUT/diff_layers.{md,json,png} and return the document. `plant` names one of
    alignment.planted_bugs.MODEL_BUGS to plant in the Jittor twin (a demonstration)."""
    from shared.text.batching import FTDataset

    from .planted_bugs import MODEL_BUGS, Patches
    if batch_size < 1 or batches < 1:
        raise ValueError("--batch_size and --batches must be >= 1")
    if plant is not None and plant not in MODEL_BUGS:
        raise ValueError(f"unknown planted bug {plant!r}; choose one of {sorted(MODEL_BUGS)}")
    state = load_state(config, init_checkpoint, lora_checkpoint, seed)
    if device == "cuda":
        from jittor_impl import runtime
        runtime.use_device("cuda")
    dataset = FTDataset.from_file(data, batch_size, seq_len)
    chosen = [b for _, b in zip(range(batches), dataset.eval_batches())]
    patch, hook, note, dropout = Patches(), None, "", 0.0
    if plant:
        hook = lambda model: MODEL_BUGS[plant][0](patch, model)  # noqa: E731
        dropout = MODEL_BUGS[plant][1]  # a dropout bug needs dropout on (masks shared by both twins)
        note = f"Planted bug (demonstration): **{plant}** in the Jittor twin" + (
            f" (LoRA dropout {dropout}, masks shared by both twins)." if dropout else ".")
    try:
        document = run(config, state, chosen, precision, device, label_smooth,
                       jittor_model_hook=hook, dropout=dropout)
    finally:
        patch.undo()
    document["checkpoint"] = {"init": init_checkpoint, "lora": lora_checkpoint, "data": data,
                              "batch_size": batch_size, "batches": len(chosen), "planted": plant}
    write(document, out_dir, note=note)
    return document
