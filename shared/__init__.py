"""Backend-neutral code shared by `torch_impl` and `jittor_impl`.

Nothing in this package imports torch or jittor at module level: tokenizer, E2E formatting and
encoding, batching, the beam-search spec, checkpoint I/O, metrics and plotting live here once.
"""
