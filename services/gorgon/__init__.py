"""gorgon: a Kubernetes-operated LLM inference platform with Medusa speculative decoding."""

__version__ = "0.1.0"
