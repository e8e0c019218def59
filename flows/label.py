"""The data half of distill as a flow of its own: sample, label with the teacher, build.

    python -m flows.label --profile demo sampling.size=50

Everything it makes lands under runs/<run_id>/ in S3 (manifest, labels, splits, the saved
DatasetDict), where `train` and `evaluate-and-promote` pick it up by run id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.env import apply_offline_env

apply_offline_env()  # before prefect imports: it reads these settings on import

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from flows.common import flow_run_key, run_dir  # noqa: E402
from stillroom.config import PipelineConfig, profile_parser  # noqa: E402
from stillroom.params import LabelParams  # noqa: E402
from stillroom.report import count_rows, markdown_table  # noqa: E402
from stillroom.sampling import Manifest  # noqa: E402
from stillroom.teacher import LabelResult  # noqa: E402
from tasks.data import build_task, label_task, sample_task  # noqa: E402


@dataclass
class Labelled:
    """The data stages' results, in memory for the stages that follow in the same run."""

    manifest: Manifest
    labels: LabelResult
    dataset: dict[str, Any]  # path, uri, hash and sizes of the saved splits

    def counts(self) -> dict[str, Any]:
        return {"sampling": self.manifest.counts(), "labelling": self.labels.counts()}


def label_stage(cfg: PipelineConfig, run_id: str, dataset_dir: Path) -> Labelled:
    """Each task is cached on its inputs (run id included): a retry reuses what it did."""
    manifest = sample_task(cfg, run_id)
    labels = label_task(cfg, run_id, manifest)
    return Labelled(manifest, labels, build_task(cfg, run_id, labels, dataset_dir))


@flow(name="label")
def label(params: LabelParams) -> dict[str, Any]:
    cfg = params.load()
    run_id = params.run_id or flow_run_key()
    done = label_stage(cfg, run_id, run_dir(run_id) / "dataset")
    counts = done.counts()
    create_markdown_artifact(
        key="label-counts",
        markdown="\n".join(markdown_table(count_rows(counts["sampling"], counts["labelling"]))),
        description=f"run {run_id}: sampled = labelled + quarantined + skipped, with reasons",
    )
    dataset = {k: v for k, v in done.dataset.items() if k != "path"}  # a path is this machine's
    return {"run_id": run_id, **counts, "dataset": dataset}


def main() -> None:
    args = profile_parser("Sample, label and build one run's dataset.").parse_args()
    params = LabelParams(profile=args.profile, overrides=args.overrides)
    print(json.dumps(label(params), indent=2, default=str))


if __name__ == "__main__":
    main()
