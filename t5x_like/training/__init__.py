"""Training: TrainState, losses, optimizers and the training loop."""
