"""Speed: the CUDA fast path (dtype, SDPA, channels_last, torch.compile per shape bucket), shape dispatch, the
compile-artifact cache in the bucket, direct-to-device loading.

May import loaders.models, loaders.storage and loaders.errors.
"""
