"""Generation: the recipe (resolve → load → generate → persist → respond) and every mode it runs — txt2img,
img2img, inpaint, hires fix, refiner, ControlNet units, LoRA/VAE/embedding plans, samplers' schedulers, batching,
outputs, the NSFW censor, fast-path warm-up.

May import handlers.billing, handlers.accounts, the contract and loaders; never tasks or http.
"""
