"""Data: every CIFAR source read safely into uint8 arrays, and the Kaggle pickle."""
