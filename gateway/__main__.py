"""`python -m gateway` (and the `gateway` command) -> cli.main(), SIGHUP held from the start."""

import sys

from gateway.hangups import EarlyHangups


def main() -> int:
    early = EarlyHangups().install()  # before anything heavy is imported
    from gateway.cli import main as cli_main  # noqa: PLC0415 - after the handler, on purpose

    return cli_main(early_hangups=early)


if __name__ == "__main__":
    sys.exit(main())
