"""The model: its configuration, parameters, checkpoints and parameter-efficient methods."""
