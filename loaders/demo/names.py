"""The demo checkpoints' names, torch-free so Settings (and every CLI command) can import them."""

DEMO_NAME = "easel-demo.safetensors"
DEMO_FAMILY = "demo"
# `easel demo-model --family X` names → the tiny family and the file name it is installed under
DEMO_FAMILIES = {"sd15": "demo", "sd15-inpaint": "demo-inpaint", "sd2": "demo-sd2", "sdxl": "demo-sdxl",
                 "sdxl-refiner": "demo-sdxl-refiner"}
DEMO_NAMES = {"demo": DEMO_NAME, "demo-inpaint": "easel-demo-inpaint.safetensors",
              "demo-sd2": "easel-demo-sd2.safetensors", "demo-sdxl": "easel-demo-sdxl.safetensors",
              "demo-sdxl-refiner": "easel-demo-sdxl-refiner.safetensors"}
