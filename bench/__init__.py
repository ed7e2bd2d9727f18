"""Benchmarks of klime_mp against the official klime SDK, Segment and PostHog."""
