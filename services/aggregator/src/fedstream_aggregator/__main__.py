from fedstream_aggregator.main import main

raise SystemExit(main())
