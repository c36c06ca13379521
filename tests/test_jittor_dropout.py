"""jittor_impl.lora.dropout draws and computes exactly what Jittor's nn.dropout does."""
import numpy as np

from jittor_impl.lora import dropout
from jittor_impl.runtime import jt


def test_dropout_equals_jittor_dropout():
    x = jt.array(np.random.default_rng(0).standard_normal((4, 33, 16)).astype(np.float32))
    jt.set_seed(7)
    ours = dropout(x, 0.1).numpy()
    jt.set_seed(7)
    theirs = jt.nn.dropout(x, 0.1, is_train=True).numpy()
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    assert 0 < (ours == 0).mean() < 0.3  # some, not all, dropped
