"""Cross-backend alignment suite: the PyTorch and Jittor twins against each other and against
independently derived values (see harness.py for the shared helpers and the report), and
`auto_diff`, the harness for any PyTorch model and its Jittor port (port_diff.py)."""
from .port_diff import auto_diff  # noqa: F401
from .weight_transfer import assign_weights  # noqa: F401
