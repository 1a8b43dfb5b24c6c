"""Benchmark tasks: data, models, training engine and evaluators."""
