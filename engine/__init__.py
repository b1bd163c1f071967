"""avatarbench's engine: computation only, usable from the CLI, tests and any front end (never imports gradio)."""
