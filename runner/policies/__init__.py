"""Policy as code: Rego policy sets evaluated in-process (regopy) against JSON plans."""
