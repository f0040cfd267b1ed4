"""`parcours segments ...`."""
