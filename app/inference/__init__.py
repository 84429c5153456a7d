"""Everything between a received try-on and its outcome: the worker contract, the scheduler
(one device owner), the models and their predict, step-time estimates and the one try-on flow."""
