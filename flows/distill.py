"""The distillation flow: sample -> label -> build -> train -> evaluate -> register.

    python -m flows.distill --profile demo storage.endpoint_url=http://127.0.0.1:9000

Runs against whatever S3 and teacher the config names; `flows/demo.py` starts local ones.
"""

from __future__ import annotations

import json
from typing import Any

from stillroom.env import apply_offline_env

apply_offline_env()  # before prefect/mlflow import: they read these settings on import

from prefect import flow  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402

from flows.common import flow_run_key, run_dir  # noqa: E402
from flows.evaluate_and_promote import RunInputs, evaluate_stage  # noqa: E402
from flows.label import label_stage  # noqa: E402
from flows.train import TrainParams, train  # noqa: E402
from stillroom.config import PipelineConfig, profile_parser  # noqa: E402
from stillroom.params import DistillParams  # noqa: E402
from stillroom.storage import get_json, make_s3_client, parse_s3_uri, s3_uri  # noqa: E402
from tasks.data import run_key  # noqa: E402


def train_stage(
    cfg: PipelineConfig, params: DistillParams, run_id: str, dataset_uri: str
) -> dict[str, Any]:
    """The train flow, here as a subflow or on its own pool through its deployment.

    Only URIs cross over; the deployed run's metrics are read back from S3, where the
    train task wrote them, so no result storage has to be shared between the two.
    """
    output_uri = s3_uri(cfg.storage.bucket, run_key(cfg, run_id, "training"))
    train_params = TrainParams(
        run_id=run_id,
        dataset_uri=dataset_uri,
        output_uri=output_uri,
        profile=params.profile,
        overrides=params.config_overrides(),
    )
    if cfg.training.deployment is None:
        return train(train_params)
    run = run_deployment(
        cfg.training.deployment, parameters={"params": train_params.model_dump()}, timeout=None
    )
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"training run {run.name} ended {run.state and run.state.name}")
    return get_json(make_s3_client(cfg.storage), *parse_s3_uri(f"{output_uri}/metrics.json"))


@flow(name="distill")
def distill(params: DistillParams) -> dict[str, Any]:
    """Sample -> label -> build -> train -> evaluate -> register, as one run.

    The stages are the `label`, `train` and `evaluate-and-promote` flows' own: the same
    tasks with the same caching, so a retried run reuses every stage that finished.
    """
    cfg = params.load()
    run_id = params.run_id or flow_run_key()
    dataset_dir = run_dir(run_id) / "dataset"
    done = label_stage(cfg, run_id, dataset_dir)
    training = train_stage(cfg, params, run_id, done.dataset["uri"])
    inputs = RunInputs(
        counts=done.counts(),
        dataset=done.dataset,
        dataset_dir=dataset_dir,
        training=training,
        labelled=done.labels.labelled,
    )
    return evaluate_stage(cfg, run_id, inputs)


def main() -> None:
    args = profile_parser("Run the distillation flow.").parse_args()
    params = DistillParams(profile=args.profile, overrides=args.overrides)
    print(json.dumps(distill(params), indent=2, default=str))


if __name__ == "__main__":
    main()
