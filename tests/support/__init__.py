"""Test support: a tiny model the tests build themselves and a real vLLM CPU server on it."""
