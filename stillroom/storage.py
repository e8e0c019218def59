"""S3 access: a boto3 client built from config, JSON/JSONL in and out, streamed listings.

The same code talks to AWS, MinIO or the local moto server; only `endpoint_url` differs.
Credentials come from boto3's usual chain (env, profile, instance role), never from config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from stillroom.config import StorageConfig


def make_s3_client(cfg: StorageConfig) -> Any:
    """A client with adaptive retries: throttling from S3 is routine at scale.

    The connection pool is sized for the labeller's threads (botocore's default is 10,
    which would make concurrent reads queue for a connection).
    """
    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region,
        config=BotoConfig(
            retries={"max_attempts": 5, "mode": "adaptive"},
            max_pool_connections=cfg.max_connections,
        ),
    )


def ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def iter_objects(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Stream every object under `prefix` page by page, in constant memory."""
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def get_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def put_bytes(s3: Any, bucket: str, key: str, body: bytes, content_type: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def get_json(s3: Any, bucket: str, key: str) -> Any:
    return json.loads(get_bytes(s3, bucket, key))


def put_json(s3: Any, bucket: str, key: str, value: Any) -> None:
    body = json.dumps(value, ensure_ascii=False).encode()
    put_bytes(s3, bucket, key, body, "application/json")


def get_json_if_exists(s3: Any, bucket: str, key: str) -> Any | None:
    """One GET: the parsed object, or None when the key is absent (no HEAD round trip first)."""
    try:
        return get_json(s3, bucket, key)
    except ClientError as error:
        if error.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def put_jsonl(s3: Any, bucket: str, key: str, records: Iterable[dict[str, Any]]) -> None:
    put_bytes(s3, bucket, key, dumps_jsonl(records), "application/x-ndjson")


def read_jsonl(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in get_bytes(s3, bucket, key).decode().splitlines() if line]


def content_hash(value: Any) -> str:
    """sha256 of a value's canonical JSON: key order and whitespace do not change it."""
    canonical = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/prefix` -> (bucket, "key/prefix"); anything else is an error."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"expected an s3://bucket/prefix URI, got {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def upload_dir(s3: Any, folder: Path, uri: str) -> int:
    """Every file under `folder` to `uri/<relative path>`; returns the file count.

    boto3's managed transfer splits large files (a merged model) into parallel parts.
    """
    bucket, prefix = parse_s3_uri(uri)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder)}")
    return len(files)


def download_dir(s3: Any, uri: str, folder: Path) -> int:
    """Every object under `uri/` into `folder`, keeping relative paths; returns the count."""
    bucket, prefix = parse_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    count = 0
    for obj in iter_objects(s3, bucket, prefix):
        target = folder / obj["Key"][len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(target))
        count += 1
    if not count:
        raise FileNotFoundError(f"nothing under {uri}")
    return count
