"""The `longgen` console script and `python -m longgen`: the CLI (longgen/cli.py `main`), where a Ctrl-C that
comes while Python loads its modules, before a command takes over its own signals (the first second or so),
ends in longgen's one line and exit status 130, as a later one does, instead of a traceback."""

import sys


def run() -> None:
    try:
        from longgen.cli import main

        code = main()
    except KeyboardInterrupt:  # the commands catch theirs (longgen/errors.py): only the start reaches here
        print("longgen: error: interrupted (SIGINT) before the command began", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
