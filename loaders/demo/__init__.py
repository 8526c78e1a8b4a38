"""Demo writers: tiny random models in the real architectures and the real A1111 single-file layouts (checkpoints of
every family, ControlNet, LoRA, VAE, embeddings), written through our diffusers → LDM mapping.

The top of loaders: may import any loaders package.
"""
