"""`python -m nac_tf.train` = `nac-train` (`nac_tf.cli.train`), kept for existing commands."""
from nac_tf.cli.train import config_from_args, config_from_flags, define_flags, main, run

__all__ = ["config_from_args", "config_from_flags", "define_flags", "main", "run"]

if __name__ == "__main__":
    run()
