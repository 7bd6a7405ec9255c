"""Train a model: `python train.py [group=option ...] [key=value ...]` (see README.md)."""

import hydra

from keel.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    from keel.pipeline import main as run

    return run(cfg)


if __name__ == "__main__":
    main()
