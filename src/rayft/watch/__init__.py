"""`rayft watch`: a daemon that turns new data files into a gated, served, better model.

Modules: ``config`` (WatchConfig), ``policy`` (pure rules: window, skip, backoff, stage plan,
replay sample, stable files, resources), ``state`` (state.json + control.json), ``alerts``
(webhook / Slack / Telegram / SMTP sinks), ``report`` (status.json, dashboard.html,
versions.csv), ``daemon`` (the loop, in-process calls of curate/train/eval/registry),
``control`` (`rayft watch status|pause|resume|stop`).
"""
