"""loomd: an edge daemon for private, always-on AI agents."""

__version__ = "0.1.0"
