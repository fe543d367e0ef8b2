"""consul"""
