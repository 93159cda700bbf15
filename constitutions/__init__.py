"""Shipped constitutions (package data). See README.md for the format."""
