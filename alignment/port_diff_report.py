"""alignment.auto_diff's report: OUT/auto_diff.json (the whole result), OUT/auto_diff.md (the
verdicts, the worst error per module, every failing tensor) and OUT/auto_diff.png (each module's
error against float64 for torch fp32 and Jittor, forward and backward, on a log scale: where
Jittor's line leaves torch's, the two part), written together or not at all."""
from __future__ import annotations

import os

from shared.runtime.atomic import atomic_group, atomic_path, write_json, write_text

VERDICTS = (("forward", "the deepest module whose input agrees and whose output does not"),
            ("backward", "the deepest module whose output gradient agrees and whose own input "
                         "gradient does not"),
            ("buffers", "the first module whose buffers (running statistics) differ after the forward"),
            ("steps", "the first tensor (weight, buffer, optimizer state) that differs after a step"))


def _f(v):
    return "-" if v is None else f"{v:.2e}"


def markdown(result, title: str) -> str:
    fd = result.first_divergence
    rule = result.rule
    failing = result.failing()
    lines = [f"# {title}", "",
             f"- mode {'train' if result.train else 'eval'}, {result.steps} optimizer steps; "
             f"{len(result.records)} tensors compared, {len(failing)} failing"
             + (f", {sum(1 for r in result.records if r.get('explained'))} explained by kink flips"
                if result.kink_flips else ""),
             f"- rule: Jittor's relative L2 error against float64 <= {rule.get('k')} x torch fp32's "
             f"+ {rule.get('floor', 0):.2g} (alignment/compare.py)",
             "- **first divergence: " + ", ".join(f"{key} `{fd.get(key)}`" for key, _ in VERDICTS)
             + "**", f"- verdict: **{'passed' if result.passed else 'FAILED'}**"]
    if result.skipped_weights:
        lines.append(f"- torch tensors not copied (the port keeps none): {len(result.skipped_weights)}, "
                     f"e.g. `{result.skipped_weights[0]}`")
    lines += [f"- note: {n}" for n in result.notes]
    lines += ["", "## Worst error against float64 per module (relative L2)", "",
              "| module | forward torch | forward jittor | backward torch | backward jittor |",
              "|---|---|---|---|---|"]
    for name in result.forward_order:
        row = result.per_module.get(name)
        if row:
            lines.append(f"| {name} | {_f(row['outputs'][0])} | {_f(row['outputs'][1])} | "
                         f"{_f(row['output_grads'][0])} | {_f(row['output_grads'][1])} |")
    lines += ["", f"## Failing tensors ({len(failing)})", ""]
    if failing:
        lines += ["| kind | tensor | err jittor | err torch | bound | cosine | why |",
                  "|---|---|---|---|---|---|---|"]
        for r in failing[:60]:
            lines.append(f"| {r['kind']} | {r['name']} | {_f(r['err_test'])} | {_f(r['err_base'])} | "
                         f"{_f(r['bound'])} | {'-' if r['cosine'] is None else format(r['cosine'], '.6f')} "
                         f"| {r['why']} |")
        if len(failing) > 60:
            lines.append(f"| ... | {len(failing) - 60} more in auto_diff.json | | | | | |")
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def plot(document: dict, path: str, label=lambda name: name):
    """Each module's error against float64 (log scale), forward and backward, torch fp32 and
    Jittor, from the result's JSON document (`per_module`, `forward_order`, `rule`,
    `first_divergence`); `label(module)` writes the tick labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in document["forward_order"] if n in document["per_module"]]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.32 * len(names)), 7), sharex=True)
    floor = document["rule"].get("floor", 1e-12)
    for ax, kind, title in ((axes[0], "outputs", "forward: module outputs"),
                            (axes[1], "output_grads", "backward: gradients w.r.t. module outputs")):
        t = [document["per_module"][n][kind][0] for n in names]
        j = [document["per_module"][n][kind][1] for n in names]
        finite = [v for v in t + j if v is not None] or [1.0]
        top = max(max(finite) * 10, floor)
        clip = lambda vs: [top if v is None else max(v, floor / 10) for v in vs]  # noqa: E731
        ax.semilogy(range(len(names)), clip(t), "o-", label="torch fp32 vs float64")
        ax.semilogy(range(len(names)), clip(j), "s--", label="jittor vs float64")
        bad = [i for i, v in enumerate(j) if v is None]
        if bad:
            ax.semilogy(bad, [top] * len(bad), "rx", markersize=9, label="jittor non-finite")
        ax.set_title(title)
        ax.set_ylabel("relative L2 error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best")
        fd = document["first_divergence"]["forward" if kind == "outputs" else "backward"]
        if fd in names:
            ax.axvline(names.index(fd), color="red", alpha=0.5)
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels([label(n) for n in names], rotation=90, fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write(result, out_dir: str, title: str):
    """OUT/auto_diff.{json,md,png} (see module doc)."""
    document = result.to_json()
    with atomic_group(out_dir):
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, "auto_diff.json"), document)
        write_text(os.path.join(out_dir, "auto_diff.md"), markdown(result, title))
        plot(document, os.path.join(out_dir, "auto_diff.png"))
