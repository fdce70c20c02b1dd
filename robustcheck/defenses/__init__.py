"""robustcheck.defenses"""
