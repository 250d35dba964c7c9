"""policyd: per-destination outbound TLS policy for Postfix."""

__version__ = "0.1.0"
