"""``python -m tunefuse``: the ``tunefuse`` console script (tunefuse/cli.py)."""

from tunefuse.cli import entry

if __name__ == "__main__":
    entry()
