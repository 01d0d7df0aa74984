"""`python -m config`: the variables table of docs/configuration.md, from the model."""

from config.settings import reference_table

print(reference_table())
