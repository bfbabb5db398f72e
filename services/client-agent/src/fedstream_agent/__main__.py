from fedstream_agent.main import main

raise SystemExit(main())
