"""`pope report`: runs and evals as figures, report.md and a self-contained index.html."""
