"""`python -m service.cli`: how the worker supervisor and `relay dev` start their children."""

from service.cli import main

raise SystemExit(main())
