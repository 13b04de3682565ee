"""position-manager: the Python adapters around the SQL core in sql/."""
