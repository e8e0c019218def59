"""The `stillroom` command: inspect config, prepare models, serve the local teacher.

    stillroom config --profile demo training.max_steps=4   # the resolved config, as JSON
    stillroom prepare-model smollm2-135m                    # convert/cache a base model
    stillroom teacher --replay .stillroom/teacher/replay.jsonl --port 8765
    stillroom label --run-id nightly-1 --profile demo storage.endpoint_url=...  # sample + label

`label` samples into `runs/<run-id>/` (or reuses the manifest already there) and labels it;
run it again with the same run id after a crash or Ctrl-C and it resumes from the cache.

Flows are run with `python -m flows.distill` / `python -m flows.demo` (see README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from stillroom.config import profile_parser
from stillroom.env import apply_offline_env, state_dir


def show_config(args: argparse.Namespace) -> None:
    from stillroom.config import load_config

    print(load_config(args.profile, args.overrides).model_dump_json(indent=2))


def prepare_model(args: argparse.Namespace) -> None:
    from stillroom.models import resolve_base_model

    print(resolve_base_model(args.name, state_dir() / "models"))


def label(args: argparse.Namespace) -> None:
    from stillroom.config import load_config
    from stillroom.sampling import read_manifest, sample_documents, write_manifest
    from stillroom.storage import get_json_if_exists, make_s3_client
    from stillroom.targets import load_target
    from stillroom.teacher import label_manifest, write_labels

    cfg = load_config(args.profile, args.overrides)
    s3, bucket, target = make_s3_client(cfg.storage), cfg.storage.bucket, load_target(cfg.target)
    prefix = f"{cfg.storage.run_prefix}/{args.run_id}"
    if get_json_if_exists(s3, bucket, f"{prefix}/manifest.json") is not None:
        manifest = read_manifest(s3, bucket, f"{prefix}/manifest.json")
    else:
        manifest = sample_documents(s3, bucket, cfg.sampling, target)
        write_manifest(s3, bucket, f"{prefix}/manifest.json", manifest)
    result = label_manifest(s3, manifest, target, cfg.teacher)
    write_labels(s3, bucket, f"{prefix}/labels", result)
    print(json.dumps({"sampling": manifest.counts(), "labelling": result.counts()}, indent=2))
    if result.stopped:
        sys.exit(3)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stillroom", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser(
        "config",
        help="print the resolved pipeline config",
        parents=[profile_parser("", default_profile=None)],
        add_help=False,
    )
    config.set_defaults(handler=show_config)
    model = commands.add_parser("prepare-model", help="convert and cache a base model")
    model.add_argument("name", help="smollm2-135m, tiny, or a local HF folder")
    model.set_defaults(handler=prepare_model)
    labelling = commands.add_parser(
        "label",
        help="sample and label one run (resumable)",
        parents=[profile_parser("", default_profile="demo")],
        add_help=False,
    )
    labelling.add_argument("--run-id", required=True, help="outputs go to runs/<run-id>/")
    labelling.set_defaults(handler=label)
    commands.add_parser("teacher", help="run the local replay teacher", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    apply_offline_env()
    # Progress and stop notices are log lines on stderr; results are JSON on stdout.
    # Only ours at INFO: httpx would log every request.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("stillroom").setLevel(logging.INFO)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "teacher":
        from stillroom.teacher_server import main as teacher_main

        teacher_main(rest)
        return
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    args.handler(args)


if __name__ == "__main__":
    main()
