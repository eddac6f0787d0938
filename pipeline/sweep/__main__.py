"""`python -m pipeline.sweep`: the sweep's command line (`pipeline.sweep.driver`)."""

from pipeline.sweep import driver

driver.main()
