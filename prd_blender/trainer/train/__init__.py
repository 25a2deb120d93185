"""Training: the Gaussian model, losses, densification, checkpoints, and the stage loops."""
