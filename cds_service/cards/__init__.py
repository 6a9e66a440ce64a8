"""CDS Hooks cards built from scores and model outputs: one module per service's card."""
