"""Stages: rows in, rows out. Each talks to a Backend, never to a model directly."""
