"""`python -m enstratus_workers.daemons.subscriber`: the bin script, the init script and the units start it so."""

from enstratus_workers.daemons.subscriber.daemon import main

raise SystemExit(main())
