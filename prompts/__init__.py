"""Shipped Jinja prompt templates (package data)."""
