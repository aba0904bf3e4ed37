"""tower: a keyboard-driven terminal control tower for many LLM agent loops."""

__version__ = "0.1.0"
