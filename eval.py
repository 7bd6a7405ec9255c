"""Test a checkpoint, training nothing: `python eval.py ckpt_path=PATH [file=new.csv]` (see README.md)."""

import hydra

from keel.config import exit_now, register_resolvers, run_app

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg):
    from keel.pipeline import eval_main

    return eval_main(cfg)


if __name__ == "__main__":
    run_app(main)  # every config mistake, Hydra's own too: one message, exit status 2
    exit_now()  # finished: skip the interpreter's teardown of torch & co (1-2 s)
