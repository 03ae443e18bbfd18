"""One runner per op type (see builder.solve.runner for the contract)."""
