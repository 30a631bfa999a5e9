"""Pure statistics for experiments: no Ray, no I/O; functions of their inputs.

Import the module you need (``serve_ab.analysis.ab``, ``.sequential``, ``.power``,
``.shadow``, ``.drift``); nothing is imported here so that loading one does not pay for the others.
"""
