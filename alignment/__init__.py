"""Cross-backend alignment suite: the PyTorch and Jittor twins against each other and against
independently derived values (see harness.py for the shared helpers and the report)."""
