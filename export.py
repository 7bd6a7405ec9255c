"""Build a bundle from a checkpoint: `python export.py ckpt_path=PATH` (see README.md)."""

import hydra

from keel.config import exit_now, register_resolvers, run_app, validate_export_config

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg):
    validate_export_config(cfg)  # before the export code (torch, onnx) is imported
    from keel.pipeline import export_main

    return export_main(cfg)


if __name__ == "__main__":
    run_app(main)  # every config mistake, Hydra's own too: one message, exit status 2
    exit_now()  # finished: skip the interpreter's teardown of torch & co (1-2 s)
