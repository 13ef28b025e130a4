from freezeframe.cli.main import main

raise SystemExit(main())
