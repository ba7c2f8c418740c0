"""What every run shares: devices, strategy and precision (`devices`), the run directory and
its resume rules (`rundir`), the training loop (`loop`), local multi-worker launches
(`launch`) and the run skeleton every experiment trains through (`run`)."""
