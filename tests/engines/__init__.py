"""Real engines the tests start and stop themselves (PostgreSQL): found on the machine,
started once per pytest session (per xdist worker), stopped by PID at the end."""
