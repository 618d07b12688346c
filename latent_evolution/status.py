"""`python -m latent_evolution.status`: the command is `latent_evolution.cli.status`."""

import sys

from latent_evolution.cli.status import main

if __name__ == "__main__":
    sys.exit(main())
