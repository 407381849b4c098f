"""``python -m enstratus_workers.monitor [--home PATH] [--refresh S]``: the terminal monitor."""

from enstratus_workers.monitor.tui import main

if __name__ == "__main__":
    raise SystemExit(main())
