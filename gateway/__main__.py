"""`python -m gateway` -> cli.main()."""

import sys

from gateway.cli import main

sys.exit(main())
