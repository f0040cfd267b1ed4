"""`parcours profiles import` and `parcours events import`."""
