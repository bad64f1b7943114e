"""Everything that talks to Redis: floor state applied atomically, presence."""
