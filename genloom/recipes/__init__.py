"""Built-in recipes (TOML), listed by `genloom recipes`."""
