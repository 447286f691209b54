"""regtest"""
