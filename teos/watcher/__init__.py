"""watcher"""
