"""tl-space: learn image classifiers by transfer learning with timm and accelerate, and show what they learned."""

__version__ = "0.1.0"
