"""Gemma, Gemma 2, Gemma 3: GeGLU with the Llama module names.

Gemma 2/3 normalise the MLP's output again (``post_feedforward_layernorm``) before adding it to the
residual stream; ``mlp.out`` is the MLP module's own output, before that norm.  The multimodal Gemma 3
checkpoints load as ``Gemma3ForConditionalGeneration`` with the text layers under ``model.language_model``.
"""

from bench.subject.architectures import gated

ARCHITECTURES = {
    "gemma": gated("gemma"),
    "gemma2": gated("gemma2"),
    "gemma3_text": gated("gemma3_text"),
    "gemma3": gated("gemma3", "model.language_model.layers"),
}
