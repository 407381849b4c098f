"""`python -m enstratus_workers.daemons.pinger`: the bin script, the init script and the units start it so."""

from enstratus_workers.daemons.pinger.daemon import main

raise SystemExit(main())
