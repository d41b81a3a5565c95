"""lidit-export: export, quantize and deploy LI-DiT-style text-to-image models."""
__version__ = "0.1.0"
