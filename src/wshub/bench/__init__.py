"""The benchmark tool: load generator, servers under test and baselines (``wshub bench``).

Servers run in processes of their own (pinned to one core where the machine has
two), the load generator in another, so that each side's CPU is measured alone.
"""
