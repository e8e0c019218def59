"""The student as an MLflow pyfunc: what the registry hands to whoever serves a version.

Input rows carry the request as JSON strings (`messages`, `tools`), the same shape as the
dataset; the output is the parsed tool calls as JSON, `null` where the student's text did not
parse (the router escalates those to the teacher). Prompts and parsing are the ones training
and evaluation use, in the format of the student's own chat template (see `prompts.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from stillroom.inference import eval_prompts, generate_all, load_for_inference
from stillroom.prompts import parse_completion


class StudentModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model, self.tokenizer = load_for_inference(Path(context.artifacts["model_dir"]))
        self.settings = json.loads(Path(context.artifacts["settings"]).read_text())

    # Unannotated on purpose: MLflow reads predict's type hints as the model signature, and
    # the signature here is given explicitly when the model is logged.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        rows = model_input.to_dict("records")
        prompts = eval_prompts(rows, self.tokenizer, self.settings["system_prompt"])
        generations = generate_all(
            self.model,
            self.tokenizer,
            prompts,
            self.settings["max_new_tokens"],
            self.settings["batch_size"],
        )
        return [json.dumps(parse_completion(self.tokenizer, text)) for text in generations.texts]


def fetch_model_dir(model_uri: str, dest: Path) -> Path:
    """Download a registered student (e.g. `models:/name@champion`) and return its HF folder.

    The folder is the pyfunc's `model_dir` artifact; its place inside the download is read
    from the MLmodel file rather than assumed.
    """
    import mlflow.artifacts
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    relative = mlmodel["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]
    return local / relative


def fetch_champion(client: Any, name: str, dest: Path) -> tuple[str, Path] | None:
    """(version, model folder) of what serves now, or None before anything was promoted."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return str(version.version), fetch_model_dir(f"models:/{name}/{version.version}", dest)
