"""secureig, the Secure Inference Gateway: keys, scopes and limits in front of self-hosted LLMs."""

__version__ = "0.1.0"
