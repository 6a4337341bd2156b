"""pope: Privileged On-Policy Exploration (POPE) for RL on hard reasoning problems."""

__version__ = "0.1.0"
