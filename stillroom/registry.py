"""MLflow: log a candidate, register it as a reviewable version, move aliases by gate or by hand.

Every candidate becomes a registered version that a reviewer can judge on its own: lineage
as version tags, a model card as its description, each gate's result as a `gate.*` tag. It
always takes the alias `challenger`. `champion` moves only when every gate passes (review:
auto), or when a person approves: `record_review`, `stillroom promote`, or moving the alias
in the MLflow UI. A failed gate is never promoted automatically.

Each move of `champion` made here is appended to the registered model's history, one tag per
move (`champion_history.00001`, ... holding JSON). One tag per move rather than one growing
JSON list: entries are never rewritten, so an edit cannot lose an earlier one, no single
value grows without bound, and each move is one readable row on the model's page. `rollback`
replays that history to find the champion before the current one.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from stillroom.config import RegistryConfig
from stillroom.env import project_root, state_dir

CHALLENGER = "challenger"
CHAMPION = "champion"
METRIC_TAG_PREFIX = "metric."
GATE_TAG_PREFIX = "gate."
HISTORY_TAG_PREFIX = "champion_history."
LATENCY_METRIC = "latency_p95_ms"
# Metrics are ratios of counts: 0.7 - 0.6 is 0.09999999999999998 in floating point, and a
# margin met exactly must not fail by rounding.
TOLERANCE = 1e-9

Action = Literal["auto", "promote", "approve", "rollback"]


# --- inputs and decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class Lineage:
    """Where a candidate came from; each non-empty field becomes a version tag of its name."""

    target: str
    prompt_version: str
    dataset_hash: str
    teacher_model: str
    base_model: str
    training_config_hash: str
    code_version: str
    pipeline_run: str = ""
    training_mode: str = ""

    def tags(self) -> dict[str, str]:
        return {key: value for key, value in asdict(self).items() if value}


@dataclass
class Candidate:
    """What the caller knows about one trained student, all of it measured on one test set."""

    model_uri: str
    primary: str  # the target's metric that decides promotion, e.g. "accuracy"
    metrics: dict[str, float]  # the candidate on the held-out test set
    lineage: Lineage
    dataset_sizes: dict[str, int] = field(default_factory=dict)
    base_metrics: dict[str, float] | None = None  # the untrained base, same test set
    # The current champion re-scored on this run's test set, and the version that was scored
    # (None: whichever version is champion at registration).
    champion_metrics: dict[str, float] | None = None
    champion_version: str | None = None


@dataclass(frozen=True)
class ChampionScore:
    """The champion's primary metric on the candidate's test set; None where not measured."""

    version: str
    value: float | None
    basis: str  # how the value was obtained, for the tags and the card


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool  # every gate passes
    reasons: list[str]  # why it is not promoted: one per failed gate (empty when it is)
    checks: dict[str, str]  # gate name -> "pass: ..." / "fail: ..." / "off: ..."

    def summary(self) -> str:
        if self.promote:
            return "promoted to champion: every gate passes"
        return "kept as challenger: " + "; ".join(self.reasons)


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    decision: str  # one line: what happened to the champion alias and why
    promoted: bool
    checks: dict[str, str]
    review: str  # "auto", "pending" (manual, gates pass) or "skipped" (manual, a gate failed)


# --- the gates (pure) -----------------------------------------------------------------------


def known(value: float | None) -> float | None:
    """A metric's value, or None where it is missing or NaN (a failed measurement)."""
    return None if value is None or math.isnan(value) else float(value)


def check_min_accuracy(primary: str, value: float | None, floor: float) -> str:
    if value is None:
        return f"fail: {primary} missing from the candidate's metrics"
    if value >= floor - TOLERANCE:
        return f"pass: {value:.3f} >= {floor:.3f}"
    return f"fail: {value:.3f} < {floor:.3f}"


def check_min_margin(
    primary: str, value: float | None, margin: float, champion: ChampionScore | None
) -> str:
    """At least `margin` better than the champion; exactly the margin passes, so at 0.0 a
    tie goes to the newer model, trained on fresher data."""
    if champion is None:
        return "pass: no champion yet"
    theirs = known(champion.value)
    if theirs is None:
        return f"fail: v{champion.version} has no {primary} on this test set ({champion.basis})"
    if value is None:
        return f"fail: {primary} missing from the candidate's metrics"
    gain = value - theirs
    shown = f"{value:.3f} vs v{champion.version} {theirs:.3f} = {gain:+.3f}"
    if gain >= margin - TOLERANCE:
        return f"pass: {shown} >= margin {margin:+.3f}"
    return f"fail: {shown} < margin {margin:+.3f}"


def check_max_latency(latency: float | None, limit: float | None) -> str:
    if limit is None:
        return "off: no latency limit set"
    if latency is None:
        return f"fail: {LATENCY_METRIC} missing from the candidate's metrics (limit {limit:.1f} ms)"
    if latency <= limit:
        return f"pass: p95 {latency:.1f} ms <= {limit:.1f} ms"
    return f"fail: p95 {latency:.1f} ms > {limit:.1f} ms"


def decide_promotion(
    cfg: RegistryConfig,
    primary: str,
    metrics: Mapping[str, float],
    champion: ChampionScore | None,
) -> PromotionDecision:
    """Every gate, on plain numbers: a candidate failing any one is not promoted."""
    value, latency = known(metrics.get(primary)), known(metrics.get(LATENCY_METRIC))
    checks = {
        "min_accuracy": check_min_accuracy(primary, value, cfg.min_accuracy),
        "min_margin": check_min_margin(primary, value, cfg.min_margin, champion),
        "max_latency_ms": check_max_latency(latency, cfg.max_latency_ms),
    }
    reasons = [f"{gate} {result}" for gate, result in checks.items() if result.startswith("fail")]
    return PromotionDecision(promote=not reasons, reasons=reasons, checks=checks)


def champion_score(champion: ModelVersion | None, candidate: Candidate) -> ChampionScore | None:
    """The champion's figure to compare with, only ever one from the candidate's test set."""
    if champion is None:
        return None
    version = str(champion.version)
    rescored = candidate.champion_metrics
    if rescored is not None and candidate.champion_version in (None, version):
        return ChampionScore(version, rescored.get(candidate.primary), "re-scored on this test set")
    stored = champion.tags.get(METRIC_TAG_PREFIX + candidate.primary)
    if stored is not None and champion.tags.get("dataset_hash") == candidate.lineage.dataset_hash:
        return ChampionScore(version, float(stored), "its registered score, same dataset")
    theirs = (champion.tags.get("dataset_hash") or "unknown")[:12]
    return ChampionScore(version, None, f"registered on dataset {theirs}, not re-scored here")


# --- lineage helpers ------------------------------------------------------------------------


def config_hash(section: BaseModel) -> str:
    """Identity of a config section: equal settings, equal hash, whatever the key order."""
    text = json.dumps(section.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version(root: Path | None = None) -> str:
    """The git commit of the checkout (`-dirty` with uncommitted changes), else the package
    version. Never fails: a missing git or an installed package is a normal case."""
    root = root or project_root()
    if (root / ".git").exists():  # not an unrelated repo that happens to enclose site-packages
        try:
            commit = git(root, "rev-parse", "HEAD")
            dirty = git(root, "status", "--porcelain", "--untracked-files=no")
            return commit + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"stillroom=={version('stillroom')}"
    except PackageNotFoundError:
        return "unknown"


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def current_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry, as in some containers
        return "unknown"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- what a version carries -----------------------------------------------------------------


def version_tags(
    candidate: Candidate,
    champion: ChampionScore | None,
    decision: PromotionDecision,
    review: str,
) -> dict[str, str]:
    """Everything a reviewer needs to judge the version without opening its run."""
    primary = candidate.primary
    tags = candidate.lineage.tags() | {"primary_metric": primary}
    for key in (primary, LATENCY_METRIC):
        if (value := known(candidate.metrics.get(key))) is not None:
            tags[METRIC_TAG_PREFIX + key] = str(value)
    if candidate.dataset_sizes:
        tags["dataset_sizes"] = json.dumps(candidate.dataset_sizes)
    if (base := known((candidate.base_metrics or {}).get(primary))) is not None:
        tags[f"base.{primary}"] = str(base)
    tags["vs_champion.version"] = champion.version if champion else "none"
    if champion is not None:
        tags["vs_champion.basis"] = champion.basis
        if (theirs := known(champion.value)) is not None:
            tags[f"vs_champion.{primary}"] = str(theirs)
    tags |= {GATE_TAG_PREFIX + gate: result for gate, result in decision.checks.items()}
    tags["promotion"] = outcome(decision, review)
    tags["review.status"] = review
    return tags


def outcome(decision: PromotionDecision, review: str) -> str:
    if review == "auto":
        return decision.summary()
    if review == "pending":
        return "awaiting review: every gate passes"
    return decision.summary() + " (nothing to review)"


def figure(value: float | None, digits: int = 3) -> str:
    return "n/a" if (value := known(value)) is None else f"{value:.{digits}f}"


def model_card(
    name: str,
    candidate: Candidate,
    champion: ChampionScore | None,
    decision: PromotionDecision,
    result: str,
) -> str:
    """The version's description in MLflow (markdown): what it learned from, how it
    scored against the champion and the base on the same test set, and the gates."""
    lin, primary, metrics = candidate.lineage, candidate.primary, candidate.metrics
    sizes = " / ".join(f"{k} {v}" for k, v in candidate.dataset_sizes.items()) or "sizes unknown"
    rows = [("candidate", figure(metrics.get(primary)), figure(metrics.get(LATENCY_METRIC), 1))]
    if champion is None:
        rows.append(("champion", "none yet", ""))
    else:
        rows.append(
            (f"champion v{champion.version} ({champion.basis})", figure(champion.value), "")
        )
    if candidate.base_metrics is not None:
        rows.append(("base model, untrained", figure(candidate.base_metrics.get(primary)), ""))
    mode = f" ({lin.training_mode})" if lin.training_mode else ""
    lines = [
        f"### {name}: candidate from run {lin.pipeline_run or 'unknown'}",
        "",
        f"**Trained on** dataset `{lin.dataset_hash[:12]}` ({sizes}), answers by teacher "
        f"`{lin.teacher_model}` with prompt {lin.prompt_version} of target `{lin.target}`; "
        f"base model `{lin.base_model}`, training config `{lin.training_config_hash}`{mode}, "
        f"code `{lin.code_version}`.",
        "",
        "**Scored** on the held-out test set, against the teacher's answers:",
        "",
        f"| model | {primary} | p95 latency ms |",
        "|---|---|---|",
        *(f"| {label} | {value} | {latency} |" for label, value, latency in rows),
        "",
        "**Gates**",
        "",
        "| gate | result |",
        "|---|---|",
        *(f"| {gate} | {check} |" for gate, check in decision.checks.items()),
        "",
        f"**Outcome**: {result}",
    ]
    return "\n".join(lines)


# --- MLflow store ---------------------------------------------------------------------------


# The MLflow server this process was started against (a worker's environment names it).
# Read once, at import: `mlflow.set_tracking_uri` writes the same variable, so reading it
# later would give whichever store this process used last, not what its environment said.
LAUNCH_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or None


def tracking_uri(cfg: RegistryConfig) -> str:
    """The configured store, else MLFLOW_TRACKING_URI as the process was started with,
    else a sqlite file in the state folder."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if LAUNCH_TRACKING_URI:
        return LAUNCH_TRACKING_URI
    folder = state_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def make_client(cfg: RegistryConfig) -> MlflowClient:
    """A client on the configured store, with nothing created: enough to move aliases."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def configure(cfg: RegistryConfig) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists with local artifacts."""
    client = make_client(cfg)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        artifacts = state_dir() / "mlflow" / "artifacts" if not cfg.tracking_uri else None
        mlflow.create_experiment(
            cfg.experiment, artifact_location=artifacts.as_uri() if artifacts else None
        )
    mlflow.set_experiment(cfg.experiment)
    return client


def ui_links(cfg: RegistryConfig, registration: Registration) -> dict[str, str]:
    """Where a reviewer finds the run and the version in the MLflow UI.

    Only an HTTP tracking server has a UI to link to; a local sqlite store gets its ids.
    """
    uri = tracking_uri(cfg)
    version = f"{registration.name} v{registration.version}"
    if not uri.startswith(("http://", "https://")):
        return {"MLflow run": registration.run_id, "model version": version}
    experiment = make_client(cfg).get_run(registration.run_id).info.experiment_id
    base = uri.rstrip("/")
    return {
        "MLflow run": f"{base}/#/experiments/{experiment}/runs/{registration.run_id}",
        "model version": f"{base}/#/models/{registration.name}/versions/{registration.version}",
    }


def log_student_model(model_dir: Path, settings: dict[str, Any], example: Any) -> Any:
    from stillroom.serving import StudentModel

    with tempfile.TemporaryDirectory() as tmp:
        settings_path = Path(tmp) / "settings.json"
        settings_path.write_text(json.dumps(settings))
        return mlflow.pyfunc.log_model(
            name="student",
            python_model=StudentModel(),
            artifacts={"model_dir": str(model_dir), "settings": str(settings_path)},
            signature=infer_signature(example, ["[]"]),
            # Explicit requirements: inference would import and probe the whole environment.
            pip_requirements=pinned_requirements(),
        )


def pinned_requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "peft", "mlflow", "pandas")
    return [f"{p}=={version(p).split('+')[0]}" for p in packages]


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


# --- register -------------------------------------------------------------------------------


def register_candidate(
    client: MlflowClient, cfg: RegistryConfig, candidate: Candidate
) -> Registration:
    """Register `candidate` as the newest version: tags, model card, `challenger`, and
    `champion` too when review is auto and every gate passes. `configure` must have pointed
    MLflow at the same store as `client`."""
    name = cfg.model_name
    champion = current_champion(client, name)
    score = champion_score(champion, candidate)
    decision = decide_promotion(cfg, candidate.primary, candidate.metrics, score)
    review = "auto" if cfg.review == "auto" else ("pending" if decision.promote else "skipped")
    tags = version_tags(candidate, score, decision, review)
    version = str(mlflow.register_model(candidate.model_uri, name, tags=tags).version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if review == "auto" and decision.promote:
        record_move(
            client, name, "auto", version, score.version if score else None, decision.summary()
        )
    card = model_card(name, candidate, score, decision, tags["promotion"])
    client.update_model_version(name, version, description=card)
    registered = client.get_model_version(name, version)
    return Registration(
        name=name,
        version=version,
        run_id=registered.run_id,
        aliases=sorted(registered.aliases),
        decision=tags["promotion"],
        promoted=review == "auto" and decision.promote,
        checks=decision.checks,
        review=review,
    )


# --- champion moves and their history -------------------------------------------------------


def read_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded move of `champion`, oldest first."""
    tags = client.get_registered_model(name).tags
    keys = sorted(k for k in tags if k.startswith(HISTORY_TAG_PREFIX))
    return [json.loads(tags[k]) for k in keys]


def record_move(
    client: MlflowClient,
    name: str,
    action: Action,
    version: str,
    previous: str | None,
    comment: str,
    by: str | None = None,
    overridden: list[str] | None = None,
) -> dict[str, Any]:
    """Move `champion` to `version` and append the move to the history. `overridden`:
    the gates `version` failed, when a person promotes it regardless."""
    client.set_registered_model_alias(name, CHAMPION, version)
    tags = client.get_registered_model(name).tags
    numbers = [
        int(k.removeprefix(HISTORY_TAG_PREFIX)) for k in tags if k.startswith(HISTORY_TAG_PREFIX)
    ]
    event = {
        "action": action,
        "version": version,
        "previous": previous,
        "at": now(),
        "by": by or current_user(),
        "comment": comment,
        "override": bool(overridden),
        "failed_gates": overridden or [],
    }
    key = f"{HISTORY_TAG_PREFIX}{max(numbers, default=0) + 1:05d}"
    client.set_registered_model_tag(name, key, json.dumps(event))
    return event


def failed_gates(version: ModelVersion) -> list[str]:
    """The gates this version failed at registration; a version carrying no gate results
    (registered outside Stillroom) never passed them either."""
    gates = {k: v for k, v in version.tags.items() if k.startswith(GATE_TAG_PREFIX)}
    if not gates:
        return ["no gate results recorded on this version"]
    return [
        f"{k.removeprefix(GATE_TAG_PREFIX)} {v}"
        for k, v in sorted(gates.items())
        if v.startswith("fail")
    ]


def promote_version(
    client: MlflowClient,
    name: str,
    version: str,
    comment: str = "",
    action: Action = "promote",
    by: str | None = None,
) -> dict[str, Any]:
    """A person makes `version` champion. Allowed even when it failed a gate: that is
    recorded as an override, with the failed gates, in the history and on the version."""
    target = client.get_model_version(name, version)  # raises for a version that doesn't exist
    champion = current_champion(client, name)
    if champion is not None and str(champion.version) == str(version):
        raise ValueError(f"{name} v{version} is already champion")
    failed = failed_gates(target)
    event = record_move(
        client,
        name,
        action,
        str(version),
        str(champion.version) if champion else None,
        comment,
        by,
        failed,
    )
    if failed:
        note = f"{event['by']} at {event['at']} despite: {'; '.join(failed)}"
        client.set_model_version_tag(
            name, version, "override", note + (f" ({comment})" if comment else "")
        )
    return event


def rollback_target(history: list[dict[str, Any]], current: str) -> str | None:
    """The champion before `current`, from the history alone (pure).

    Replayed as a stack: a promotion pushes its version, a rollback pops the one it undid,
    so rolling back twice goes back two champions. If `current` was set outside Stillroom
    (the alias moved in the UI), the last recorded champion is the one it displaced."""
    stack: list[str] = []
    for event in history:
        if event["action"] == "rollback" and stack and stack[-1] == event["previous"]:
            stack.pop()
        if not stack or stack[-1] != event["version"]:
            stack.append(event["version"])
    if stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


def rollback_champion(
    client: MlflowClient, name: str, comment: str = "", by: str | None = None
) -> dict[str, Any]:
    """Move `champion` back to the previous champion and record it."""
    champion = current_champion(client, name)
    if champion is None:
        raise ValueError(f"{name} has no champion to roll back")
    current = str(champion.version)
    history = read_history(client, name)
    while (target := rollback_target(history, current)) is not None:
        try:
            client.get_model_version(name, target)
            break
        except MlflowException:  # deleted since: skip over it to the champion before
            history = [e for e in history if e["version"] != target]
    if target is None:
        raise ValueError(f"{name} v{current} has no earlier champion recorded to roll back to")
    return record_move(client, name, "rollback", target, current, comment, by)


def record_review(
    client: MlflowClient,
    name: str,
    version: str,
    decision: Literal["approve", "reject"],
    comment: str = "",
    by: str | None = None,
) -> dict[str, Any] | None:
    """A reviewer's verdict on a version (review: manual), kept on the version. Approval
    makes it champion (an override if it failed a gate); returns that move, or None."""
    by = by or current_user()
    status = "approved" if decision == "approve" else "rejected"
    for key, value in {"status": status, "by": by, "at": now(), "comment": comment}.items():
        client.set_model_version_tag(name, version, f"review.{key}", value)
    # Replaces "awaiting review"; the gate results stay in the gate.* tags.
    line = f"{status} by {by}" + (f": {comment}" if comment else "")
    client.set_model_version_tag(name, version, "promotion", line)
    if decision == "reject":
        return None
    return promote_version(client, name, version, comment, action="approve", by=by)
