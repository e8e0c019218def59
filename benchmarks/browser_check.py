"""Headless Chromium against the served stack: the Prefect UI's deployment page shows
`distill/on-demand`, its run page the form's fields, and the MLflow UI's registered-model
page shows the `champion` alias.

    make serve && make deploy
    .venv/bin/python benchmarks/browser_check.py --promote   # first one smoke run made champion

Both UIs are single-page apps: Chromium's `--dump-dom` after a virtual-time budget prints
the DOM once their scripts have fetched from the APIs and rendered. Needs Debian's
`chromium` package (`apt-get install chromium`); the test suite never depends on it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from html import unescape

from stillroom.env import apply_offline_env

apply_offline_env()

from stillroom import stack  # noqa: E402

DEPLOYMENT = "distill/on-demand"
# Titles the UI gives the form's fields (pydantic's, from stillroom/params.py).
FORM_FIELDS = ["Profile", "Sample Size", "Teacher Model", "Base Model", "Gate", "Overrides"]
MODEL = "bfcl-tool-call-student"


def dump_dom(url: str, budget_ms: int) -> str:
    """The rendered page as HTML. No sandbox: it runs as root in containers, and only ever
    opens our own pages on 127.0.0.1."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    argv += ["--no-first-run", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {result.stderr[-2000:]}")
    return result.stdout


def visible_text(html: str) -> str:
    """Text of the page as a reader sees it: scripts, styles and tags dropped."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def promote(urls: dict[str, str]) -> None:
    """One on-demand run on the smoke profile with the accuracy floor at 0, so the gate
    passes and the candidate becomes champion."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The deployment's form, as a person would fill it in: the gate is a field of its own.
    params = {
        "profile": "smoke",
        "gate": {"min_accuracy": 0.0},
        "overrides": stack.form_overrides(urls),  # MLflow, S3: the workers' env
    }
    started = time.perf_counter()
    with temporary_settings({PREFECT_API_URL: f"{urls['prefect']}/api"}):
        run = run_deployment(DEPLOYMENT, parameters={"params": params}, timeout=900)
    state = run.state.name if run.state else "unknown"
    print(f"promoting run {run.name}: {state} after {time.perf_counter() - started:.0f} s")
    if not run.state or not run.state.is_completed():
        raise SystemExit(1)


def check(label: str, text: str, wanted: list[str]) -> bool:
    missing = [w for w in wanted if w not in text]
    found = ", ".join(repr(w) for w in wanted if w not in missing)
    print(f"  {label}: found {found or 'nothing'}" + (f"; MISSING {missing}" if missing else ""))
    return not missing


def check_alias_row(text: str, alias: str, version: str | None) -> bool:
    """The alias badge (`@ champion`) sits at the end of its version's row, after the
    version's tags (which hold no `@`)."""
    row = re.search(rf"Version (\d+) [^@]*(?:@ \S+ )*@ {alias}\b", text)
    shown = row.group(1) if row else None
    print(f"  {alias} alias shown on version {shown}; the registry says {version}")
    return shown is not None and shown == version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promote", action="store_true", help="first run one promoted run")
    parser.add_argument("--budget-ms", type=int, default=15000, help="virtual time per page")
    args = parser.parse_args()
    state = stack.load_state()
    if state is None:
        raise SystemExit("the stack is not running: make serve && make deploy")
    urls = state["urls"]
    if args.promote:
        promote(urls)

    flow, name = DEPLOYMENT.split("/")
    deployment = get_json(f"{urls['prefect']}/api/deployments/name/{flow}/{name}")
    registered = get_json(f"{urls['mlflow']}/api/2.0/mlflow/registered-models/get?name={MODEL}")[
        "registered_model"
    ]
    aliases = {a["alias"]: a["version"] for a in registered.get("aliases", [])}
    print(f"API: deployment {DEPLOYMENT} id {deployment['id']}; {MODEL} aliases {aliases}")

    pages = {
        "Prefect deployment page": (
            f"{urls['prefect']}/deployments/deployment/{deployment['id']}",
            [
                f"Deployment: {name}",
                f"Flow {flow}",
                f"Work Pool {deployment['work_pool_name']}",
                f"Entrypoint {deployment['entrypoint']}",
            ],
        ),
        # The custom-run page renders the form from the flow's parameters model.
        "Prefect run form": (
            f"{urls['prefect']}/deployments/deployment/{deployment['id']}/run",
            FORM_FIELDS,
        ),
        "MLflow registered model page": (
            f"{urls['mlflow']}/#/models/{MODEL}",
            [f"Registered Models {MODEL}", "@ champion", "@ challenger"],
        ),
    }
    ok = True
    for label, (url, wanted) in pages.items():
        started = time.perf_counter()
        text = visible_text(dump_dom(url, args.budget_ms))
        print(f"{url} ({time.perf_counter() - started:.1f} s, {len(text)} characters of text)")
        ok &= check(label, text, wanted)
        if "@ champion" in wanted:
            ok &= check_alias_row(text, "champion", aliases.get("champion"))
    print("browser check: " + ("passed" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
