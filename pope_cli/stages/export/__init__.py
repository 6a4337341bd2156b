"""`pope export`: `config` (its options), `writer` (the run), `files` (the reward module and launch files it writes)."""
