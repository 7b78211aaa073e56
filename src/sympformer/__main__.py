from sympformer.cli import main

raise SystemExit(main())
