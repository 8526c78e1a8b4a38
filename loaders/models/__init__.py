"""Models: name resolution and the download cache, safetensors validation, family detection from keys, shipped
configs and tokenizers, single-file → diffusers pipelines and their per-task views, the LDM key mapping, the
auxiliary models (prompt expansion, safety checker).

May import loaders.storage and loaders.errors.
"""
