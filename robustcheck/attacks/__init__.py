"""robustcheck.attacks"""
