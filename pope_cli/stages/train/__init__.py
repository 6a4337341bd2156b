"""The POPE trainer: batch.py (data mix, rollouts, tensors) → advantages.py / loss.py (pure
tensor functions) → update.py (the optimizer step) → trainer.py (the loop), checkpoint.py."""
