"""Feature fusion, temporal modules and task heads trained from the cache."""
