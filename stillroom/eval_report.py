"""The evaluation report a reviewer reads before promoting: one comparison table (baseline,
candidate, champion, teacher), plots, and the worst misses with input, teacher and student.

Written as markdown and HTML beside its PNG plots, so the same folder can be logged to
MLflow as artifacts and shown in the Prefect UI as a markdown artifact.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from stillroom.evaluation import EvalReport

COLUMNS = (
    ("accuracy", "exact match"),
    ("validity_rate", "valid JSON"),
    ("name_accuracy", "right function"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p95_ms", "p95 ms"),
    ("throughput_per_s", "req/s (batched)"),
    ("cost_per_1k_usd", "USD per 1k"),
)


def comparison_rows(
    models: dict[str, EvalReport | None], teacher: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per model that was evaluated, then the teacher (agreement 1 by definition)."""
    rows = [
        {"model": name, **{key: report.metrics.get(key) for key, _ in COLUMNS}}
        for name, report in models.items()
        if report is not None
    ]
    rows.append(
        {"model": "teacher", "accuracy": 1.0, "validity_rate": 1.0, "name_accuracy": 1.0}
        | {k: teacher.get(k) for k in ("latency_p50_ms", "latency_p95_ms", "cost_per_1k_usd")}
    )
    return rows


def cost_ratio(rows: list[dict[str, Any]], model: str = "candidate") -> float | None:
    """How many times cheaper per request the model is than the teacher."""
    by_name = {r["model"]: r for r in rows}
    student, teacher = by_name.get(model, {}), by_name["teacher"]
    if not student.get("cost_per_1k_usd") or not teacher.get("cost_per_1k_usd"):
        return None
    return teacher["cost_per_1k_usd"] / student["cost_per_1k_usd"]


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    header = "| model | " + " | ".join(label for _, label in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    body = [
        f"| {r['model']} | " + " | ".join(cell(r.get(key)) for key, _ in COLUMNS) + " |"
        for r in rows
    ]
    return "\n".join([header, rule, *body])


def worst_markdown(examples: list[dict[str, Any]]) -> str:
    if not examples:
        return "No misses."
    lines = []
    for e in examples:
        lines += [
            f"**{e['id']}** ({e['verdict']}): {e['input'][:300]}",
            "",
            f"- teacher: `{e['teacher'][:400]}`",
            f"- student: `{e['student'][:400]}`",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- plots


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    metrics = [("accuracy", "exact match"), ("validity_rate", "valid JSON")]
    metrics.append(("name_accuracy", "right function"))
    models = [r for r in rows if r["model"] != "teacher"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(models))
    for i, row in enumerate(models):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [row.get(k) or 0.0 for k, _ in metrics], width, label=row["model"])
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([label for _, label in metrics])
    ax.set_ylim(0, 1)
    ax.set_ylabel("agreement with the teacher")
    ax.legend()
    save(fig, path)


def plot_per_tool(per_tool: dict[str, dict[str, float]], path: Path, top: int = 25) -> None:
    """The most frequent tools in the test set, with the student's accuracy on each (the
    tool_call metric's `per_tool` figures)."""
    plt = pyplot()
    tools = sorted(per_tool.items(), key=lambda kv: -kv[1]["count"])[:top]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(tools))))
    ax.barh([f"{name} ({int(v['count'])})" for name, v in tools], [v["accuracy"] for _, v in tools])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("exact match (test examples per tool in brackets)")
    save(fig, path)


def plot_latency(models: dict[str, EvalReport | None], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    for name, report in models.items():
        if report is not None and report.latencies_ms:
            ax.hist(report.latencies_ms, bins=20, alpha=0.6, label=name)
    ax.set_xlabel("ms per request (one at a time)")
    ax.set_ylabel("requests")
    ax.legend()
    save(fig, path)


def plot_training(history: list[dict[str, Any]], path: Path) -> None:
    """Train and validation loss by step, from the trainer's log history."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    val = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    for points, label, style in ((train, "train", "-"), (val, "validation", "o-")):
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss on the answer tokens")
    ax.legend()
    save(fig, path)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a worker
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


# ---------------------------------------------------------------- the report


def write_report(
    out_dir: Path,
    title: str,
    models: dict[str, EvalReport | None],
    teacher: dict[str, Any],
    worst: list[dict[str, Any]],
    decision: str,
) -> dict[str, Any]:
    """report.md, report.html and the plots in `out_dir`; returns the table and markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(models, teacher)
    plots = {"comparison.png": lambda p: plot_comparison(rows, p)}
    candidate = models.get("candidate")
    if candidate is not None and candidate.metrics.get("per_tool"):
        plots["per_tool.png"] = lambda p: plot_per_tool(candidate.metrics["per_tool"], p)
    plots["latency.png"] = lambda p: plot_latency(models, p)
    for name, draw in plots.items():
        draw(out_dir / name)
    ratio = cost_ratio(rows)
    ratio_line = f"The candidate costs 1/{ratio:.0f} of the teacher per request." if ratio else ""
    markdown = "\n\n".join(
        [
            f"# {title}",
            comparison_markdown(rows),
            ratio_line,
            f"**Promotion:** {decision}",
            "## Worst misses",
            worst_markdown(worst),
        ]
    )
    (out_dir / "report.md").write_text(markdown)
    (out_dir / "report.html").write_text(
        render_html(title, rows, ratio_line, decision, worst, plots)
    )
    return {"table": rows, "markdown": markdown, "cost_ratio": ratio}


def render_html(
    title: str,
    rows: list[dict[str, Any]],
    ratio_line: str,
    decision: str,
    worst: list[dict[str, Any]],
    plots: dict[str, Any],
) -> str:
    e = html.escape
    head = "".join(f"<th>{e(label)}</th>" for _, label in COLUMNS)
    body = "".join(
        f"<tr><td>{e(r['model'])}</td>"
        + "".join(f"<td>{e(cell(r.get(k)))}</td>" for k, _ in COLUMNS)
        + "</tr>"
        for r in rows
    )
    misses = "".join(
        f"<h3>{e(w['id'])} ({e(w['verdict'])})</h3><p>{e(w['input'][:300])}</p>"
        f"<p>teacher: <code>{e(w['teacher'][:400])}</code></p>"
        f"<p>student: <code>{e(w['student'][:400])}</code></p>"
        for w in worst
    )
    images = "".join(f'<img src="{e(name)}" alt="{e(name)}">' for name in plots)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title></head>"
        f"<body><h1>{e(title)}</h1><table border='1'><tr><th>model</th>{head}</tr>{body}"
        f"</table><p>{e(ratio_line)}</p><p><b>Promotion:</b> {e(decision)}</p>{images}"
        f"<h2>Worst misses</h2>{misses}</body></html>"
    )
