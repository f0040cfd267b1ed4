"""Everything that talks to Temporal from outside: CLI, event routing, the dev stack."""
