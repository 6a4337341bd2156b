"""`pope sft`: supervised warm starts (oracle solutions or rejection-sampled guided completions)."""
