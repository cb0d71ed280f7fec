"""Evaluation: inference with TTA, ensembles, metrics, corruptions, reports and figures."""
