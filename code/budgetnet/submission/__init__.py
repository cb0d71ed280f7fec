"""Submission: the CSV, its checker, the Kaggle upload and the published release."""
