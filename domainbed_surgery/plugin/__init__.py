"""The plugin machinery: finding DomainBed, the lazy start-up hook, registration, entry points.

Light: importing it imports neither torch nor DomainBed (it runs at interpreter start).
"""
