"""mmunlearn: make a multimodal LLM forget chosen people, keep everything else, prove both with numbers."""

__version__ = "0.1.0"
