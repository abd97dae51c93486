"""mmunlearn: make a multimodal LLM forget chosen people, keep everything else, prove both with numbers."""

__version__ = "0.1.0"

# The public API (mmunlearn/api.py), imported on first use: `import mmunlearn` (and so the CLI's start)
# must not pay for torch, transformers and datasets.
_API = ("load_data", "load_model", "finetune", "unlearn", "evaluate", "attack_relearn", "attack_probe",
        "attack_rank", "Record", "DataBundle", "DataError", "LoadedModel", "ModelLoadError")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmunlearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
