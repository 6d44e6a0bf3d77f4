"""Helpers for tests and benchmarks: throwaway servers and fixtures that clean up after themselves.

Nothing in production code imports from here.
"""
