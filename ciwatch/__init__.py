"""ciwatch: a small self-hosted CI runner."""

__version__ = "0.1.0"
