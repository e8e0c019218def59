"""The run summary people read at the end of a run: one table, counts that reconcile."""

from __future__ import annotations

from typing import Any


def reasons_text(reasons: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"


def money(value: float | None) -> str:
    return "n/a (no price for this teacher)" if value is None else f"${value:.4f}"


def cost_text(labels: dict[str, Any]) -> str:
    return (
        f"{money(labels['cost_usd'])} paid this run, {money(labels['saved_by_cache_usd'])} "
        f"saved by the cache, {money(labels['cost_per_1k_documents_usd'])} per 1k documents"
    )


def count_rows(sampling: dict[str, Any], labels: dict[str, Any]) -> list[tuple[str, str]]:
    """Sampling and labelling counts: listed -> sampled -> labelled / quarantined / skipped."""
    return [
        ("documents listed", f"{sampling['listed']} ({sampling['examined']} read)"),
        (
            "rejected at intake",
            f"{sampling['rejected']} ({reasons_text(sampling['rejected_by_reason'])})",
        ),
        ("sampled", f"{sampling['sampled']} (over quota {sampling['over_quota']})"),
        (
            "labelled by teacher",
            f"{labels['labelled']} ({labels['teacher_calls']} paid calls, "
            f"{labels['cache_hits']} from cache, {labels['repaired']} repaired)",
        ),
        (
            "quarantined",
            f"{labels['quarantined']} ({reasons_text(labels['quarantined_by_reason'])})",
        ),
        ("skipped", f"{labels['skipped']} ({reasons_text(labels['skipped_by_reason'])})"),
        (
            "teacher retries",
            f"{labels['retries']} ({reasons_text(labels['retries_by_error'])})",
        ),
        ("PII scrubbed", reasons_text(labels["pii_scrubbed"])),
        ("teacher cost", cost_text(labels)),
    ]


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    student, base = summary["student"], summary.get("base")
    reg, sizes = summary["registration"], summary["dataset"]["sizes"]
    rows = count_rows(summary["sampling"], summary["labelling"]) + [
        ("train / val / test", f"{sizes['train']} / {sizes['validation']} / {sizes['test']}"),
        (
            "training",
            f"{summary['training']['mode']}, {summary['training']['steps']} steps, "
            f"{summary['training']['train_tokens_per_second']:.0f} tokens/s",
        ),
        (
            "student accuracy (held-out)",
            f"{student['accuracy']:.3f} (valid JSON {student['validity_rate']:.3f})",
        ),
    ]
    if base:
        rows.append(
            (
                "base model accuracy",
                f"{base['accuracy']:.3f} (valid JSON {base['validity_rate']:.3f})",
            )
        )
    champion = summary.get("champion")
    if champion:
        rows.append(
            (
                f"champion v{champion['version']} accuracy",
                f"{champion['accuracy']:.3f} (valid JSON {champion['validity_rate']:.3f})",
            )
        )
    elif "champion" in summary:
        rows.append(("champion accuracy", "no champion yet"))
    if "latency_p50_ms" in student:
        rows.append(
            (
                "student latency",
                f"p50 {student['latency_p50_ms']:.0f} ms, p95 {student['latency_p95_ms']:.0f} ms"
                " (one request at a time)",
            )
        )
    if summary.get("comparison"):
        teacher = next(r for r in summary["comparison"] if r["model"] == "teacher")
        ratio = summary.get("cost_ratio")
        rows.append(
            (
                "cost per 1k requests",
                f"student {money(student.get('cost_per_1k_usd'))} vs teacher "
                f"{money(teacher.get('cost_per_1k_usd'))}" + (f" (1/{ratio:.0f})" if ratio else ""),
            )
        )
    rows += [
        ("student ms/example", f"{student['ms_per_example']:.0f}"),
        ("registered model", f"{reg['name']} v{reg['version']} aliases={','.join(reg['aliases'])}"),
        ("promotion", reg["decision"]),
    ]
    return rows


def format_summary(summary: dict[str, Any]) -> str:
    rows = summary_rows(summary)
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    bar = "-" * (width + 40)
    return "\n".join([bar, f"  stillroom run {summary['run_id']}", bar, *lines, bar])


def markdown_table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| stage | result |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def format_markdown(summary: dict[str, Any]) -> str:
    table = markdown_table(summary_rows(summary))
    links = [
        f"- {name}: [{target}]({target})" if target.startswith("http") else f"- {name}: {target}"
        for name, target in summary.get("links", {}).items()
    ]
    return "\n".join(table + ([""] + links if links else []))
