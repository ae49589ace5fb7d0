"""The daemon's HTTP side: webhooks in (more to come: dashboard, JSON API, badges).

The web app gets its collaborators passed in (a `submit(event)` callable, a
delivery log); it never imports the orchestration layer.
"""
