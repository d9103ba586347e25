"""cipherdm passes."""
