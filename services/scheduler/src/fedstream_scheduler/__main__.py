from fedstream_scheduler.main import main

raise SystemExit(main())
