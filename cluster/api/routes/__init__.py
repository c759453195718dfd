"""Routers: one module per resource; each route is a dependency or two and one service call."""
