from loraflow.cli import main

raise SystemExit(main())
