"""`python -m enstratus_workers.daemons.publisher`: the bin script, the init script and the units start it so."""

from enstratus_workers.daemons.publisher.daemon import main

raise SystemExit(main())
