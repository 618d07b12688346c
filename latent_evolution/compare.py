"""`python -m latent_evolution.compare`: the command is `latent_evolution.cli.compare`."""

import sys

from latent_evolution.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
