"""Scoring completions: `checker` (the sandboxed pool with a hard deadline), `worker` (what runs
in each worker process), `adapters` (pope's reward for TRL and verl)."""
