"""The fooling-images probe: genomes (direct, CPPN), the searches and the recognisability checks."""
