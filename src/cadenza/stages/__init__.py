"""Every pipeline stage's entry point, `run(settings, paths) -> result`: each wires library
code (data/, validation/, tokens/, training/, evaluation/, tracking/) to files, metrics and
tracking. registry.py lists them in dvc.yaml's order."""
