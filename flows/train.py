"""The training stage as a flow of its own: what a GPU work pool's worker runs.

    python -m flows.train --run-id R --dataset-uri s3://b/runs/R/dataset --output-uri s3://b/runs/R/training

`distill` calls it directly, or through `run_deployment` when `training.deployment` names
a deployment on another pool. Either way it is given URIs only: the dataset comes from S3
and the adapter, merged model and metrics go back there.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stillroom.env import apply_offline_env

apply_offline_env()  # before prefect imports: it reads these settings on import

from prefect import flow  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from stillroom.config import load_config  # noqa: E402
from tasks.model import train_task  # noqa: E402


class TrainParams(BaseModel):
    """One typed model, so the Prefect UI renders a form for a training run."""

    run_id: str = Field(description="The distill run this training belongs to.")
    dataset_uri: str = Field(description="s3:// prefix of the saved DatasetDict.")
    output_uri: str = Field(description="s3:// prefix for the adapter, merged model, metrics.")
    profile: str = Field("demo", description="Config profile from configs/profiles/.")
    overrides: list[str] = Field(
        default_factory=list, description="Dotted config overrides, e.g. training.max_steps=50."
    )


@flow(name="train")
def train(params: TrainParams) -> dict[str, Any]:
    cfg = load_config(params.profile, params.overrides)
    task = train_task.with_options(retries=cfg.training.retries)
    return task(cfg, params.run_id, params.dataset_uri, params.output_uri)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the training stage on S3 inputs.")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--dataset-uri", required=True)
    parser.add_argument("--output-uri", required=True)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    params = TrainParams(
        run_id=args.run_id,
        dataset_uri=args.dataset_uri,
        output_uri=args.output_uri,
        profile=args.profile,
        overrides=args.overrides,
    )
    print(json.dumps(train(params), indent=2, default=str))


if __name__ == "__main__":
    main()
