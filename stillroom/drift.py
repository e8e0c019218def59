"""Drift: does the champion still agree with the teacher on what production sends now?

A watch draws a small sample of recent documents, has the teacher label them and scores
the champion on those labels with the evaluation the distill flow runs (sampling, labelling
and scoring are the library's own stages). What lives here is what a watch adds: the recent
window expressed as a sampling config, the count of documents that arrived since the
champion was registered, and the decision to retrain, a pure function of those figures.

The rules, each recorded as a check whether it fires or not:

- no champion: trigger only with `watch.trigger_without_champion`; a watch on a schedule
  would otherwise start a distill every tick until some candidate passes the gates.
- agreement (the target's primary metric) below `watch.min_agreement`, judged only on at
  least `watch.min_scored` fresh labels: the champion has drifted, trigger.
- at least `watch.new_documents_trigger` objects arrived since the champion was
  registered: there is enough data it never saw, trigger.
- a wanted trigger is held while a run of the deployment is unfinished or younger than
  `watch.cooldown_hours`: one retrain at a time, not one per tick while agreement is low.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from stillroom.config import SamplingConfig, StratifyConfig, WatchConfig
from stillroom.report import cost_text
from stillroom.splits import to_row
from stillroom.storage import iter_objects

# ---------------------------------------------------------------- the recent window


def window_dates(today: date, days: int) -> list[str]:
    """ISO dates of the window, newest first: `days` days ending with (and including) today."""
    return [(today - timedelta(days=n)).isoformat() for n in range(days)]


def watch_sampling(sampling: SamplingConfig, watch: WatchConfig, today: date) -> SamplingConfig:
    """The distill sampling config, narrowed to a small draw from recent date partitions.

    The window is a key stratification: each recent date may fill the whole sample, every
    other stratum (older dates, keys without a date) has a quota of 0. The sampler then
    still lists the whole prefix (so its counts stay whole) but never reads an old document,
    and its draw stays seeded: overlapping watches pick overlapping documents, which the
    teacher's answer cache does not charge for twice.
    """
    update: dict[str, Any] = {"size": watch.size}
    if watch.since_days is not None:
        update["stratify"] = StratifyConfig(
            by="key",
            pattern=watch.date_pattern,
            quotas={d: watch.size for d in window_dates(today, watch.since_days)},
            default_quota=0,
        )
    return sampling.model_copy(update=update)


def documents_in_window(
    listed: int, listed_by_stratum: dict[str, int], watch: WatchConfig, today: date
) -> int:
    """Objects listed inside the window (all of them when there is no window)."""
    if watch.since_days is None:
        return listed
    recent = set(window_dates(today, watch.since_days))
    return sum(n for stratum, n in listed_by_stratum.items() if stratum in recent)


def count_new_documents(s3: Any, bucket: str, prefix: str, since: datetime) -> int:
    """Objects under `prefix` written after `since` (S3 LastModified, tz-aware).

    Objects, not checked documents: reading each to reject the malformed ones would cost a
    GET per object for a figure that only has to say "enough".
    """
    return sum(1 for obj in iter_objects(s3, bucket, prefix) if obj["LastModified"] > since)


def score_rows(labelled: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Fresh teacher labels as the rows evaluation scores: the dataset's own row format."""
    return [to_row(record) for record in sorted(labelled, key=lambda r: r["id"])]


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Observation:
    """What one watch measured; None where it could not be measured."""

    champion_version: str | None
    primary: str  # the target's metric, e.g. "accuracy"
    agreement: float | None  # the champion's primary metric on the fresh labels
    scored: int  # fresh labels it was scored on
    new_documents: int | None  # objects since the champion was registered


@dataclass(frozen=True)
class RecentRun:
    """A run of the deployment a trigger would start, as far as the hold rule cares."""

    id: str
    name: str
    state: str
    created: datetime
    final: bool  # completed, failed, cancelled or crashed


@dataclass(frozen=True)
class Decision:
    trigger: bool
    reasons: list[str]  # why a retrain is wanted: one per rule that fired
    checks: dict[str, str] = field(default_factory=dict)  # rule -> what it found
    held: str | None = None  # why a wanted retrain was not started

    def summary(self) -> str:
        if self.trigger:
            return "distill triggered: " + "; ".join(self.reasons)
        if self.held:
            return f"held ({self.held}), wanted: " + "; ".join(self.reasons)
        return "no trigger: " + "; ".join(f"{k} {v}" for k, v in self.checks.items())


def check_agreement(obs: Observation, cfg: WatchConfig) -> tuple[str, bool]:
    """(what was found, whether it fires). k/n and the threshold are both correctly rounded,
    so a plain comparison is exact: 20/40 is 0.5, not below it."""
    if obs.champion_version is None:
        return "not measured: no champion", False
    if obs.agreement is None or obs.scored < cfg.min_scored:
        return f"not judged: {obs.scored} fresh labels, fewer than {cfg.min_scored}", False
    figures = f"{obs.primary} {obs.agreement:.3f} on {obs.scored} fresh labels"
    if obs.agreement < cfg.min_agreement:
        return f"low: {figures} < {cfg.min_agreement}", True
    return f"ok: {figures} >= {cfg.min_agreement}", False


def check_new_documents(obs: Observation, cfg: WatchConfig) -> tuple[str, bool]:
    if cfg.new_documents_trigger is None:
        return "off", False
    if obs.champion_version is None or obs.new_documents is None:
        return "not counted: no champion", False
    since = f"since champion v{obs.champion_version}"
    if obs.new_documents >= cfg.new_documents_trigger:
        return f"enough: {obs.new_documents} {since} >= {cfg.new_documents_trigger}", True
    return f"few: {obs.new_documents} {since} < {cfg.new_documents_trigger}", False


def decide_trigger(obs: Observation, cfg: WatchConfig) -> Decision:
    """Whether the figures call for a retrain; `hold_for` then applies the one-at-a-time rule."""
    checks = {"champion": f"v{obs.champion_version}" if obs.champion_version else "none"}
    reasons = []
    if obs.champion_version is None and cfg.trigger_without_champion:
        reasons.append("no champion yet")
    for name, check in (("agreement", check_agreement), ("new_documents", check_new_documents)):
        found, fires = check(obs, cfg)
        checks[name] = found
        if fires:
            reasons.append(f"{name} {found}")
    return Decision(trigger=bool(reasons), reasons=reasons, checks=checks)


def blocking_run(runs: list[RecentRun], now: datetime, cooldown_hours: float) -> RecentRun | None:
    """The newest run that holds a trigger back: unfinished, or created within the cooldown.

    An unfinished run holds however old it is: a run scheduled behind a stopped worker is
    not helped by a second one queued behind it.
    """
    cutoff = now - timedelta(hours=cooldown_hours)
    holding = [r for r in runs if not r.final or r.created > cutoff]
    return max(holding, key=lambda r: r.created, default=None)


def hold_for(
    decision: Decision, runs: list[RecentRun], now: datetime, cooldown_hours: float
) -> Decision:
    if not decision.trigger:
        return decision
    run = blocking_run(runs, now, cooldown_hours)
    if run is None:
        return replace(decision, checks=decision.checks | {"cooldown": "clear"})
    why = "unfinished" if not run.final else f"created within {cooldown_hours:g} h"
    created = run.created.astimezone(UTC)
    held = f"run {run.name} ({run.state}, created {created:%Y-%m-%d %H:%M}Z) is {why}"
    return replace(decision, trigger=False, held=held, checks=decision.checks | {"cooldown": held})


def distill_parameters(cfg: WatchConfig, deployed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The deployment's own `params` with only what the watch sets replaced.

    Prefect lays run parameters over a deployment's one top-level key at a time, so a
    `params` holding just a profile would drop the rest of the deployment's form (its
    service addresses among them); the watch starts from that form instead.
    """
    if cfg.distill_profile is None and cfg.distill_overrides is None:
        return {}  # nothing to change: the deployment's parameters apply as they are
    params: dict[str, Any] = dict((deployed or {}).get("params") or {})
    if cfg.distill_profile is not None:
        params["profile"] = cfg.distill_profile
    if cfg.distill_overrides is not None:
        params["overrides"] = cfg.distill_overrides
    return {"params": params}


# ---------------------------------------------------------------- what people read


def decision_markdown(summary: dict[str, Any]) -> str:
    """The watch's Prefect artifact: the decision first, then the figures behind it."""
    decision, counts = summary["decision"], summary["counts"]
    run = summary.get("triggered")
    rows = [
        ("decision", decision["summary"]),
        *((f"rule: {name}", found) for name, found in decision["checks"].items()),
        ("documents listed", f"{counts['listed']} ({counts['in_window']} in the window)"),
        ("sampled / labelled", f"{counts['sampled']} / {counts['labelled']}"),
        ("new since champion", str(counts["new_since_champion"])),
    ]
    if summary.get("labelling"):
        rows.append(("teacher cost", cost_text(summary["labelling"])))
    if run:
        rows.append(("triggered run", f"{run['deployment']}: {run['name']} ({run['id']})"))
    rows.append(("MLflow run", str(summary.get("mlflow_run_id"))))
    return "\n".join(
        [
            f"### Drift watch {summary['run_id']}",
            "",
            "| | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in rows),
        ]
    )
