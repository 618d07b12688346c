"""`python -m latent_evolution.evaluate`: the command is `latent_evolution.cli.evaluate`."""

import sys

from latent_evolution.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
