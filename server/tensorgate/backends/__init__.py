"""Engines that run a model. A backend knows one engine and nothing of the server."""
