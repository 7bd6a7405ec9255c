"""Build a bundle from a checkpoint: `python export.py ckpt_path=PATH` (see README.md)."""

import hydra

from keel.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg):
    from keel.pipeline import export_main

    return export_main(cfg)


if __name__ == "__main__":
    main()
