"""Training: the epoch loop, the device and threads, and a run's life."""
