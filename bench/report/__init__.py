"""Reports built from finished run folders: leaderboard tables and plots, the static viewer site.

Everything here reads run folders (the source of truth) and writes files; nothing calls a model.
"""
