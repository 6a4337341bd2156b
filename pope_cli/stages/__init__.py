"""The stage cores: one module (or package) per pipeline stage, each with its config dataclass.

Free of typer and of printing beyond progress callbacks; `pope_cli/commands/` is the thin
command-line layer over them.
"""
