"""Quoting for every dialect a rendered file is written in: one module per dialect.

``bash``, ``powershell``, ``systemd`` and ``compose`` each turn a fleet-file value into text that
the dialect reads back as exactly that value (a word, a path, a comment line), never as syntax.
Every template reaches them through its Jinja filters (see ``fleetgate.render.scripts``), and
deploy's host operations through the same functions: there is no second way to quote.

A value may hold ``${VAR}`` references that loading left unresolved (secrets such as ``HF_TOKEN``
stay in the environment): each dialect expands them at run time in its own way and quotes
everything else literally, so no value is ever interpreted twice. cmd.exe has no module:
nothing is ever written for it (Windows hosts get PowerShell only).
"""
