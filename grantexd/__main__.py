from grantexd.cli import main

raise SystemExit(main())
