"""The commands of ``gradreg``, one module each, as in HuggingFace accelerate's ``commands/``.

A command's module has ``add_parser(subparsers)``, which adds its parser (made by
:func:`.options.add_command_parser`) and sets ``func=run``, and ``run(args) -> int``, which
returns the exit status. :mod:`gradreg.cli` lists the modules and runs the one parsed.
Shared pieces: :mod:`.options` (parser building blocks), :mod:`.config_options` (the options
derived from :class:`gradreg.config.TrainConfig`), :mod:`.checks` (checks before any work)
and :mod:`.errors` (the user errors).
"""
