"""Shared by the API and the workers: settings and the database models."""
