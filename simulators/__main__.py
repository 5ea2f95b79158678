"""`python -m simulators` -> cli.main()."""

from simulators.cli import main

raise SystemExit(main())
