"""Adapters on a resident pipeline: LoRA / VAE / textual-inversion embeddings (networks.py), ControlNet models,
their preprocessors and the annotator weights those need.

May import loaders.speed, loaders.models, loaders.storage and loaders.errors.
"""
