"""cipherdm models."""
