"""OLMo-2: post-norm blocks (norms after attention and MLP) with the Llama module names.

``mlp.out`` is the MLP module's output, before ``post_feedforward_layernorm``.
"""

from bench.subject.architectures import gated

ARCHITECTURES = {"olmo2": gated("olmo2")}
