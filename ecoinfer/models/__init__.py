"""Bundled real models used by the demo and the tests."""
