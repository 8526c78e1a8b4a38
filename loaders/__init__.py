"""What touches bytes, with no knowledge of HTTP or requests. Packages, imports pointing down this list:

demo → adapters → speed → models → storage → errors (tests/test_layout.py checks it). configs/ holds the diffusers
configs and tokenizers shipped with the package (never a model hub at run time).
"""
