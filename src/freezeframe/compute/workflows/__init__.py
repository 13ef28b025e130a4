"""The compute service's workflows, run by the conductor as persisted taskflow flows."""
