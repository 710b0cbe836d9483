"""Optional integrations, each behind its own extra (``conveyor.contrib.prometheus``:
``pip install 'conveyor[prometheus]'``). ``import conveyor`` never imports them."""
