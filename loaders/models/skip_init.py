"""transformers' random weight initialisation skipped while a single file builds, since the file gives every weight.

diffusers builds a single file's text encoders on the meta device (accelerate's `init_empty_weights`) and then
loads each weight from the file, yet transformers' `post_init` still runs `initialize_weights` over the meta tensors
(it skips only under a `torch.device("meta")` context), through torch's Python reference kernels: ~0.25 s of a
2.2 s full-size SD-1.5 load. The skip is per thread: a model another thread builds meanwhile (a prompt model, a
test's random writer) is initialised as usual; weight tying still runs.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_state = threading.local()
_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    global _installed
    from transformers.modeling_utils import PreTrainedModel

    with _install_lock:
        if _installed:
            return
        initialize = PreTrainedModel.initialize_weights

        def initialize_weights(self):
            if not getattr(_state, "skipping", False):
                initialize(self)

        PreTrainedModel.initialize_weights = initialize_weights
        _installed = True


@contextmanager
def weights_from_file():
    """Within it, transformers models this thread builds skip their random initialisation."""
    _install()
    before = getattr(_state, "skipping", False)
    _state.skipping = True
    try:
        yield
    finally:
        _state.skipping = before
