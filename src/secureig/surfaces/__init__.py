"""HTTP surfaces: they translate HTTP shapes and leave every decision to the policy layer."""
