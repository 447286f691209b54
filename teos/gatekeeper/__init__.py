"""gatekeeper"""
