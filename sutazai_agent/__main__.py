from sutazai_agent.cli import main

raise SystemExit(main())
