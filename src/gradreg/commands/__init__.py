"""The commands of `gradreg`, one module each, as in HuggingFace accelerate's `commands/`.

A command's module has `add_parser(subparsers)`, which adds its parser (made by
`options.add_command_parser`) and sets `func=run`, and `run(args) -> int`, which
returns the exit status. `gradreg.cli` lists the modules and runs the one parsed.
Shared pieces: `options` (parser building blocks), `config_options` (the options
derived from `gradreg.config.TrainConfig`), `checks` (checks before any work)
and `errors` (the user errors).
"""
