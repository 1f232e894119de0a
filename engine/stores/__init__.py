"""Durable state stores behind ``engine.state.StateStore``: a SQLite file (one worker) and Redis
(a group of workers sharing state)."""
