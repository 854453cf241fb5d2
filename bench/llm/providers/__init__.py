"""Each HTTP provider as pure functions: a request builder (what goes on the wire for a
:class:`~bench.protocols.GenerationRequest`) and response parsers (the provider's JSON -> the cached value
``{"result": ..., "usage": {...}}``).  No network, no SDK, no engine: tested with plain dicts.  The
backends (:mod:`bench.llm.openai_backend`, :mod:`bench.llm.anthropic_backend`) put them over the shared
engine (:mod:`bench.llm.client`)."""
