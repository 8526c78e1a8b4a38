"""The fast path's default shape buckets, torch-free so Settings (and every CLI command) can import them."""

# SD-1.x/2.x sizes and SDXL's trained aspect buckets (A1111/Fooocus resolutions).
DEFAULT_BUCKETS = ("512x512,512x768,768x512,768x768,"
                   "1024x1024,896x1152,1152x896,832x1216,1216x832,768x1344,1344x768")
