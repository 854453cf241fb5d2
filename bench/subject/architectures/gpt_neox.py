"""GPT-NeoX / Pythia: ``gpt_neox.layers.{layer}``; parallel attention and MLP, neurons are ``mlp.act``'s output."""

from bench.subject.architectures import Architecture, Site, block_sites

_L = "gpt_neox.layers"
_NEURONS = Site(_L + ".{layer}.mlp.act", "output")
ARCHITECTURES = {"gpt_neox": Architecture("gpt_neox", _L, block_sites(_L, _NEURONS, "attention.dense"))}
