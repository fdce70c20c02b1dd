"""robustcheck.verifiers"""
