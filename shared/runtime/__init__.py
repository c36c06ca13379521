"""What every script stands on: atomic writes, locks, paths, flag types, exits, stop signals."""
