"""The networks: building them, hooks and probing, receptive fields."""
