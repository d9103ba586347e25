"""cipherdm command line and benchmarks."""
