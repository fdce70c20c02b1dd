"""robustcheck.reports"""
