"""Stillroom: distil a narrow LLM call into a small student model.

The library is plain Python: every stage is an importable function. Prefect lives in
`tasks/` and `flows/` only.
"""

__version__ = "0.1.0"
