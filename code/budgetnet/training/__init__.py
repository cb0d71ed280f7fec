"""Training: the config, batches and augmentation, optimizer and schedule, the trainer, tracking, the LR range test."""
