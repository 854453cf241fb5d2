"""GPT-2: ``transformer.h.{layer}``; neurons are ``mlp.act``'s output (= ``mlp.c_proj``'s input)."""

from bench.subject.architectures import Architecture, Site, block_sites

_H = "transformer.h"
_NEURONS = Site(_H + ".{layer}.mlp.act", "output")
ARCHITECTURES = {"gpt2": Architecture("gpt2", _H, block_sites(_H, _NEURONS, "attn.c_proj"))}
