#!/bin/sh
# One-shot (the `minio-init` service): the buckets, then one user per client with only the
# access it needs. Safe to rerun: every step is create-or-update.
#   worker-policy.json = infra/aws/iam-policy.json with BUCKET_NAME -> $STILLROOM_BUCKET
#   (tests/unit/test_infra.py checks the two agree).
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "local/$STILLROOM_BUCKET" "local/$MLFLOW_BUCKET"

mc admin policy create local stillroom-worker /init/worker-policy.json
mc admin policy create local stillroom-mlflow /init/mlflow-policy.json

attach() {  # POLICY USER SECRET; `mc admin policy attach` refuses one already attached
    mc admin user add local "$2" "$3"
    mc admin policy detach local "$1" --user "$2" >/dev/null 2>&1 || true
    mc admin policy attach local "$1" --user "$2"
}
attach stillroom-worker "$STILLROOM_S3_ACCESS_KEY" "$STILLROOM_S3_SECRET_KEY"
attach stillroom-mlflow "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"

echo "buckets $STILLROOM_BUCKET and $MLFLOW_BUCKET ready; users $STILLROOM_S3_ACCESS_KEY, $MLFLOW_S3_ACCESS_KEY"
