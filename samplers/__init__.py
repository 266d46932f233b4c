"""The built-in samplers, each module a sampler plugin registered exactly like a third-party one.

Every module here defines ``@hookimpl def register_samplers(register)``; the registry imports the
modules of this package first (see :mod:`webui.sampling.registry`).
"""
