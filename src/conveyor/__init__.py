"""Conveyor: runs AI recipes as durable jobs behind a REST API."""

__version__ = "0.1.0"
