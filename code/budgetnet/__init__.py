"""budgetnet: parameter-budgeted ResNets for CIFAR-style Kaggle competitions."""

__version__ = "0.1.0"
