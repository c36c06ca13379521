"""The model's description: configuration, parameter names and initialisation, checkpoints."""
