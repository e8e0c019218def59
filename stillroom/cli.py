"""The `stillroom` command: inspect config, prepare models, serve the local teacher.

    stillroom config --profile demo training.max_steps=4   # the resolved config, as JSON
    stillroom prepare-model smollm2-135m                    # convert/cache a base model
    stillroom teacher --replay .stillroom/teacher/replay.jsonl --port 8765
    stillroom label --run-id nightly-1 --profile demo storage.endpoint_url=...  # sample + label
    stillroom promote --version 7 --comment "misses reviewed"  # make v7 champion, recorded
    stillroom rollback --comment "v7 escalates too often"       # back to the champion before
    stillroom review --version 7 --decision reject --comment "..."  # review: manual

`promote`, `rollback` and `review` act on the registry the config names (`--profile` and
dotted overrides as everywhere, e.g. registry.tracking_uri=http://127.0.0.1:5000) and print
the recorded move as JSON. Promoting a version that failed a gate is allowed, and recorded
as an override with the gates it failed.

`label` samples into `runs/<run-id>/` (or reuses the manifest already there) and labels it;
run it again with the same run id after a crash or Ctrl-C and it resumes from the cache.

Flows are run with `python -m flows.distill` / `python -m flows.demo` (see README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

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


def move_champion(args: argparse.Namespace, act: Callable[[Any, str], Any]) -> None:
    """Run one registry action and print the recorded move; refusals exit with a message."""
    from mlflow.exceptions import MlflowException

    from stillroom.config import load_config
    from stillroom.registry import make_client

    cfg = load_config(args.profile, args.overrides).registry
    try:
        move = act(make_client(cfg), cfg.model_name)
    except (ValueError, MlflowException) as exc:  # no such version, nothing to roll back to
        sys.exit(f"stillroom {args.command}: {exc}")
    print(json.dumps(move, indent=2))


def promote(args: argparse.Namespace) -> None:
    from stillroom.registry import promote_version

    move_champion(
        args, lambda client, name: promote_version(client, name, args.version, args.comment)
    )


def rollback(args: argparse.Namespace) -> None:
    from stillroom.registry import rollback_champion

    move_champion(args, lambda client, name: rollback_champion(client, name, args.comment))


def review(args: argparse.Namespace) -> None:
    from stillroom.registry import record_review

    def act(client: Any, name: str) -> Any:
        move = record_review(client, name, args.version, args.decision, args.comment)
        return move or {"action": "reject", "version": args.version, "comment": args.comment}

    move_champion(args, act)


def add_registry_commands(commands: Any) -> None:
    def add(name: str, help_text: str, handler: Any, version: bool) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, parents=[profile_parser("", "demo")], add_help=False
        )
        if version:
            sub.add_argument("--version", required=True, help="registered model version")
        sub.add_argument("--comment", default="", help="why, kept in the history")
        sub.set_defaults(handler=handler)
        return sub

    add("promote", "make a version champion (a human override if it failed a gate)", promote, True)
    add("rollback", "move champion back to the previous champion", rollback, False)
    reviewing = add("review", "approve or reject a version awaiting review", review, True)
    reviewing.add_argument("--decision", required=True, choices=["approve", "reject"])


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
    model.add_argument(
        "name",
        help="smollm2-135m, qwen2.5-coder-0.5b, tiny, tiny-tools, a Hugging Face id already "
        "in the local cache, or a local HF folder",
    )
    model.set_defaults(handler=prepare_model)
    labelling = commands.add_parser(
        "label",
        help="sample and label one run (resumable)",
        parents=[profile_parser("", default_profile="demo")],
        add_help=False,
    )
    labelling.add_argument("--run-id", required=True, help="outputs go to runs/<run-id>/")
    labelling.set_defaults(handler=label)
    add_registry_commands(commands)
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
