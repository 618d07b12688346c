"""`python -m latent_evolution.convert`: the command is `latent_evolution.cli.convert`."""

import sys

from latent_evolution.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
