"""JWT authentication sidecar: verify bearer tokens, forward verified requests to the app."""

__version__ = "0.1.0"
