# PYTHON_ARGCOMPLETE_OK: the serve-ab entry point is here; argcomplete's global completion looks for it
"""The ``serve-ab`` command.

- ``command``: the entry point (parser) and ``validate``;
- ``rollout``: ``status`` and the control actions over HTTP;
- ``report``: ``report`` and ``runs``;
- ``sample_size``: ``sample-size``.
"""

from serve_ab.cli.command import main

__all__ = ["main"]
