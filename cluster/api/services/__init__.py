"""Services: what routes call; they read the store and talk to the scheduler, never HTTP."""
