"""``python -m oodatcaa`` runs the command-line interface."""

from oodatcaa.cli.main import main

raise SystemExit(main())
