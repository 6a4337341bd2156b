"""pope: Privileged On-Policy Exploration (POPE) for RL on hard reasoning problems."""

from pope_cli.shared.library_warnings import quiet_library_warnings

__version__ = "0.1.0"

quiet_library_warnings()
