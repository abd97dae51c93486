"""Model families (adapters), tiny builders and loading from local folders."""
