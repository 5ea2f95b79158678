"""Helpers shared by the tests: a real broker, a real publisher, polling with deadlines."""
