"""cipherdm runtime."""
