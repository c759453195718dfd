"""The web page for the team, served by the sidecar on the API's port: board, task pages, submit,
nodes, inbox, with a login per person. ``mount_web`` (cluster/web/app.py) adds it to the API's app.

Server-rendered Jinja2 templates, htmx (vendored under static/), and server-sent events for the live
parts; syntax highlighting is Pygments on the server. Nothing is loaded from a CDN.
"""
