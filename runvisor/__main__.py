from runvisor.cli import main

raise SystemExit(main())
