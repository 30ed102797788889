from metabook.cli import main

raise SystemExit(main())
