"""Prefect tasks: thin wrappers over the library's stage functions.

Each adds what orchestration needs (a name, retries where a retry is safe, artifacts for
the UI) and nothing else; the work itself lives in `stillroom/`.
"""
