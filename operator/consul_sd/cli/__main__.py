"""``python -m consul_sd.cli``: the same as the ``consul-sd`` console script."""

import sys

from consul_sd.cli import main

sys.exit(main())
