"""Thin Typer commands: options → config dataclass → the stage's `run_*` function."""
