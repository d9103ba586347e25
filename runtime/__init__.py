"""cipherdm runtime."""

from runtime.threads import limit_openmp_threads

limit_openmp_threads()   # before any module of this package loads SPU: see runtime/threads.py
